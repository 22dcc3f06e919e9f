"""The `Storage` protocol: the system of record, one transaction per method.

Every method is atomic. Times are the storage's own clock (`now_ms()`), never the caller's.
Writes made on behalf of a worker carry a `Lease` (run id + the revision the worker claimed);
a lease whose revision is no longer current is refused with `LeaseLostError` and changes
nothing. A change the state machine (`aiki._core.states`) forbids raises
`IllegalTransitionError` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    ClaimedRun,
    Enqueued,
    EventSent,
    HeartbeatReply,
    HistoryEvent,
    Lease,
    NewEvent,
    NewRun,
    RunEvent,
    RunOutcome,
    RunStatus,
    ServedVersion,
    TaskEnd,
    TaskStart,
    TimerReport,
    WaitInfo,
    WorkerInfo,
    WorkflowKey,
    WorkflowSummary,
)
from aiki._core.states import RunState


class Storage(Protocol):
    """Where runs, their task results and their history live."""

    async def open(self) -> None:
        """Connect and apply pending migrations."""
        ...

    async def close(self) -> None:
        """Finish queued writes and disconnect."""
        ...

    async def now_ms(self) -> int:
        """The storage clock, in milliseconds since the epoch."""
        ...

    async def enqueue(self, new: NewRun) -> Enqueued:
        """Create a pending run, or return the one that already has this idempotency key.

        Raises:
            IdempotencyConflictError: the key is taken by a run with another payload.
        """
        ...

    async def enqueue_claimed(self, new: NewRun, worker_id: WorkerId, lease_ms: int) -> ClaimedRun:
        """Create a run already claimed by `worker_id`, as `enqueue` then `claim` would.

        For a worker whose poll waits for work: the run goes to it in the enqueue's own
        transaction. Its history shows it enqueued, then claimed.

        Raises:
            ValueError: `new` has an idempotency key (its run may exist: use `enqueue`).
        """
        ...

    async def get_run(self, run_id: RunId) -> RunStatus | None:
        """The run, or None if there is none with this id."""
        ...

    async def get_runs(self, run_ids: Sequence[RunId]) -> list[RunStatus]:
        """The runs of `run_ids` that exist, in any order: one read for many."""
        ...

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: RunState | None = None,
        after: RunId | None = None,
        limit: int = 100,
    ) -> list[RunStatus]:
        """Runs, newest first; `after` is the last id of the previous page."""
        ...

    async def get_history(self, run_id: RunId) -> list[HistoryEvent]:
        """The run's history, oldest first (empty if the run does not exist)."""
        ...

    async def claim(
        self,
        worker_id: WorkerId,
        workflows: Sequence[WorkflowKey],
        limit: int,
        lease_ms: int,
    ) -> list[ClaimedRun]:
        """Take up to `limit` pending runs of these workflows, oldest first.

        Each becomes `running` under a new revision, with `attempt` + 1 and a lease until
        now + `lease_ms`; its recorded task results come with it.
        """
        ...

    async def heartbeat(
        self, worker_id: WorkerId, leases: Sequence[Lease], lease_ms: int
    ) -> HeartbeatReply:
        """Extend the leases still held to now + `lease_ms`; report the lost ones and cancels."""
        ...

    async def start_task(self, lease: Lease, start: TaskStart) -> None:
        """Append a task attempt's start to the history."""
        ...

    async def finish_task(self, lease: Lease, end: TaskEnd) -> bool:
        """Record an attempt's end (and the task's result when it is final).

        Returns:
            Whether a cancel of the run has been requested.
        """
        ...

    async def suspend(self, lease: Lease, wait: WaitInfo) -> bool:
        """`running` → `waiting` until `wait.until_ms`; the worker's lease ends.

        A wait for an event (`WaitKind.EVENT`, `wait.detail` its name) whose run already has
        an event of that name it has not received (one sent while it ran) goes on to
        `pending` at once.

        Returns:
            Whether the run went on to `pending`.
        """
        ...

    async def send_event(self, new: NewEvent) -> EventSent:
        """Store an event for a run; wake the run if it waits for events.

        With an idempotency key already used for this run and event name, the event sent
        then is returned (`created` False) and nothing changes.

        Raises:
            RunNotFoundError: no run has this id.
            EventRejectedError: the run is final, or the key was used with other data.
        """
        ...

    async def next_event(self, run_id: RunId, name: str, after_seq: int) -> RunEvent | None:
        """The run's first event named `name` with a seq above `after_seq`, if any."""
        ...

    async def release(self, lease: Lease) -> None:
        """`running` → `pending`: the worker hands the run back unfinished."""
        ...

    async def finish(self, lease: Lease, outcome: RunOutcome) -> RunStatus:
        """End the run: `completed`, `failed` or `cancelled`.

        `outcome.task_ends` are recorded first, in order, as `finish_task` would, in the
        same transaction: all of them and the run's end, or (the lease lost) none.
        """
        ...

    async def cancel(self, run_id: RunId, reason: str | None) -> RunStatus:
        """Cancel a pending or waiting run now; flag a running one for its worker.

        A final run is returned unchanged.

        Raises:
            RunNotFoundError: no run has this id.
        """
        ...

    async def fire_timers(self, *, max_recovery_attempts: int, limit: int = 1000) -> TimerReport:
        """Wake due waiting runs and take back runs whose lease expired.

        A run whose lease expired goes back to `pending` (recovery_attempts + 1), or ends
        `failed` once that would pass `max_recovery_attempts`, or `cancelled` if a cancel was
        requested. Returns what changed and when the next timer is due.
        """
        ...

    async def register_worker(
        self, worker_id: WorkerId, versions: Sequence[ServedVersion], lease_ms: int
    ) -> None:
        """Record that this worker serves these versions and is alive for `lease_ms`.

        Each version becomes known (`served_versions`), with its payload schema as this
        registration gives it. Each heartbeat keeps the worker alive for its `lease_ms` again.
        """
        ...

    async def unregister_worker(self, worker_id: WorkerId) -> None:
        """The worker stopped cleanly: it no longer counts as alive."""
        ...

    async def list_workers(self) -> list[WorkerInfo]:
        """Every worker ever registered, with whether it is alive now."""
        ...

    async def list_workflows(self) -> list[WorkflowSummary]:
        """Every known workflow version with its live workers and run counts by state."""
        ...

    async def served_versions(self, name: str) -> list[ServedVersion]:
        """The versions of one workflow a worker has ever registered, sorted by version.

        A version only enqueued (`allow_unknown`) is not among them.
        """
        ...
