"""The HTTP API's envelopes: what a request or reply holds besides the records themselves.

A record (`NewRun`, `RunStatus`, `PollRequest`, `TaskEnd`...) travels as itself; these add the
parts the URL does not carry (a lease's revision, say) or wrap a list in an object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from msgspec import Meta

from aiki._core.ids import RunId
from aiki._core.models import (
    Count,
    HistoryEvent,
    Lease,
    Name,
    Positive,
    RunEvent,
    RunOutcome,
    RunStatus,
    ServedVersion,
    TaskEnd,
    TaskStart,
    WaitInfo,
    WorkerInfo,
    WorkflowSummary,
)
from aiki._core.states import RunState
from aiki._http.errors import ErrorBody

# --- applications --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SendEventBody:
    """`POST /v1/runs/{run_id}/events`: `data_json` is the data's canonical JSON text."""

    name: Name
    data_json: str
    idempotency_key: Name | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventSentBody:
    """The stored event's seq; `created` is false when its idempotency key was known."""

    seq: Count
    created: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitQuery:
    """`GET /v1/runs/{run_id}/wait`: seconds to wait at most (the server caps each request)."""

    timeout_s: Annotated[float, Meta(ge=0, le=1e9)] | None = None


# Most runs one wait request may name.
MAX_WAITED_RUNS = 1_000


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitAnyBody:
    """`POST /v1/runs/wait-any`: the runs, and seconds to wait at most (capped per request)."""

    run_ids: Annotated[tuple[Name, ...], Meta(min_length=1, max_length=MAX_WAITED_RUNS)]
    timeout_s: Annotated[float, Meta(ge=0, le=1e9)]


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelBody:
    """`POST /v1/runs/{run_id}/cancel`; the body may be empty."""

    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ListRunsQuery:
    """`GET /v1/runs`: filters, and `after` = the last id of the previous page."""

    workflow: Name | None = None
    state: RunState | None = None
    after: Name | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryBody:
    """A run's history, oldest first."""

    events: tuple[HistoryEvent, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPage:
    """One page of runs, newest first; pass `next_after` as `after` for the next page."""

    runs: tuple[RunStatus, ...]
    next_after: str | None

    @classmethod
    def of(cls, runs: list[RunStatus], *, limit: int) -> RunPage:
        """A page of runs; a full page points at the next one (which may turn out empty)."""
        last = runs[-1].id if runs and len(runs) >= limit else None
        return cls(runs=tuple(runs), next_after=last)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkersBody:
    """Every worker the server has heard from."""

    workers: tuple[WorkerInfo, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowsBody:
    """Every workflow version the server knows."""

    workflows: tuple[WorkflowSummary, ...]


# --- workers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterWorkerBody:
    """`POST /v1/workers/register`."""

    worker_id: Name
    workflows: tuple[ServedVersion, ...]
    lease_ms: Positive


@dataclass(frozen=True, slots=True, kw_only=True)
class UnregisterWorkerBody:
    """`POST /v1/workers/unregister`."""

    worker_id: Name


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatBody:
    """`POST /v1/workers/heartbeat`: extend these leases by `lease_ms`."""

    worker_id: Name
    leases: tuple[Lease, ...]
    lease_ms: Positive


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTaskBody:
    """`POST /v1/runs/{run_id}/tasks/start`, under the lease `revision`."""

    revision: Count
    start: TaskStart


@dataclass(frozen=True, slots=True, kw_only=True)
class FinishTaskBody:
    """`POST /v1/runs/{run_id}/tasks/finish`, under the lease `revision`."""

    revision: Count
    end: TaskEnd


@dataclass(frozen=True, slots=True, kw_only=True)
class FinishTaskReply:
    """Whether the run's cancellation was asked for."""

    cancel_requested: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class NextEventBody:
    """`POST /v1/runs/{run_id}/events/next`, under the lease `revision`."""

    revision: Count
    name: Name
    after_seq: Count


@dataclass(frozen=True, slots=True, kw_only=True)
class NextEventReply:
    """The first matching event, or null when there is none yet."""

    event: RunEvent | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SuspendBody:
    """`POST /v1/runs/{run_id}/suspend`, under the lease `revision`."""

    revision: Count
    wait: WaitInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseBody:
    """`POST /v1/runs/{run_id}/release`, under the lease `revision`."""

    revision: Count


@dataclass(frozen=True, slots=True, kw_only=True)
class FinishBody:
    """`POST /v1/runs/{run_id}/finish`, under the lease `revision`."""

    revision: Count
    outcome: RunOutcome


# --- meta ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthBody:
    """`GET /health`."""

    status: Literal["ok"] = "ok"


# --- batched reports -----------------------------------------------------------------------

# Most reports one request carries; the worker's batcher sends fewer.
MAX_REPORTS = 1_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """One leased write of a batch: the run, its lease revision, and exactly one write.

    `start_task`, `finish_task`, `suspend` and `finish` are the bodies of the single
    endpoints; `release` hands the run back.
    """

    run_id: Name
    revision: Count
    start_task: TaskStart | None = None
    finish_task: TaskEnd | None = None
    suspend: WaitInfo | None = None
    finish: RunOutcome | None = None
    release: bool = False

    @property
    def lease(self) -> Lease:
        return Lease(run_id=RunId(self.run_id), revision=self.revision)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportsBody:
    """`POST /v1/workers/reports`: a worker's writes, applied in order for each run."""

    reports: Annotated[tuple[Report, ...], Meta(min_length=1, max_length=MAX_REPORTS)]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportAnswer:
    """One report's answer: its error, or whether the run's cancellation was asked for.

    A lost lease fails that report only; `cancel_requested` answers a task's end.
    """

    cancel_requested: bool = False
    error: ErrorBody | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportsReply:
    """An answer per report, in the order of the reports."""

    answers: tuple[ReportAnswer, ...]
