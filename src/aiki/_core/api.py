"""`EngineApi`: everything clients and workers ask of the server.

The server's service layer implements it directly (the in-process client calls it with no
network hop); the HTTP client implements the same protocol over the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    Enqueued,
    EventSent,
    HeartbeatReply,
    HistoryEvent,
    Lease,
    NewEvent,
    NewRun,
    PollReply,
    PollRequest,
    RunEvent,
    RunOutcome,
    RunsEnded,
    RunStatus,
    ServedVersion,
    TaskEnd,
    TaskStart,
    WaitInfo,
    WorkerInfo,
    WorkflowSummary,
)
from aiki._core.states import RunState


class EngineApi(Protocol):
    """The operations of the Aiki server, as seen by clients and workers."""

    # --- applications ---
    async def enqueue(self, new: NewRun) -> Enqueued: ...
    async def get_status(self, run_id: RunId) -> RunStatus: ...
    async def get_history(self, run_id: RunId) -> list[HistoryEvent]: ...
    async def wait(self, run_id: RunId, timeout_s: float | None) -> RunStatus:
        """The run's status once it is final, or when `timeout_s` passes, whichever is first."""
        ...

    async def wait_any(self, run_ids: Sequence[RunId], timeout_s: float) -> RunsEnded:
        """As soon as one of the runs is final (or names no run): those that are.

        Nothing ended when `timeout_s` passes: empty. One request waits on many runs.
        """
        ...

    async def cancel(self, run_id: RunId, reason: str | None) -> RunStatus: ...
    async def send_event(self, new: NewEvent) -> EventSent:
        """Store an event for a run (see `Storage.send_event`), waking it if it waits."""
        ...

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: RunState | None = None,
        after: RunId | None = None,
        limit: int = 100,
    ) -> list[RunStatus]: ...

    async def list_workers(self) -> list[WorkerInfo]: ...
    async def list_workflows(self) -> list[WorkflowSummary]: ...

    # --- workers ---
    async def register_worker(
        self, worker_id: WorkerId, versions: Sequence[ServedVersion], lease_ms: int
    ) -> None:
        """Record a worker as alive for `lease_ms`, serving `versions` (which become known)."""
        ...

    async def unregister_worker(self, worker_id: WorkerId) -> None:
        """A worker stopping cleanly: it no longer counts as alive."""
        ...

    async def poll(self, request: PollRequest) -> PollReply: ...
    async def heartbeat(
        self, worker_id: WorkerId, leases: Sequence[Lease], lease_ms: int
    ) -> HeartbeatReply: ...
    async def start_task(self, lease: Lease, start: TaskStart) -> None: ...
    async def finish_task(self, lease: Lease, end: TaskEnd) -> bool: ...
    async def suspend(self, lease: Lease, wait: WaitInfo) -> None: ...
    async def next_event(self, lease: Lease, name: str, after_seq: int) -> RunEvent | None:
        """The held run's first event named `name` with a seq above `after_seq`, if any."""
        ...

    async def release(self, lease: Lease) -> None: ...
    async def finish(self, lease: Lease, outcome: RunOutcome) -> None: ...
