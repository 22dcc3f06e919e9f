"""The HTTP API's JSON bodies: one `TypedDict` per request and reply, and converters both ways.

Pure: no I/O. The server validates what it receives with the pydantic adapters below (strict, so
`"5"` is not an int) and so does the client, so both sides hold exactly these shapes.

Payloads and results travel as JSON values where a record holds a value (`RunStatus.payload`,
`HistoryEvent.data`), and as JSON text where it holds `*_json: str` (`NewRun.payload_json`,
`TaskEnd.result_json`...): that text is the canonical form storage keeps and compares, so it is
sent as a string and never re-encoded on the way.

Errors are `ErrorBody`: a stable `code` per error class, a message, and the error's structured
attributes, from which the client rebuilds the exception the in-process service would raise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final, Generic, Literal, NotRequired, TypeAlias, TypeVar, cast

import pydantic
from typing_extensions import TypedDict

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    ClaimedRun,
    Enqueued,
    EventKind,
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
    RunStatus,
    TaskAddress,
    TaskEnd,
    TaskOutcome,
    TaskRecord,
    TaskStart,
    WaitInfo,
    WaitKind,
    WorkerInfo,
    WorkflowKey,
    WorkflowSummary,
)
from aiki._core.states import RunState
from aiki.errors import (
    AikiError,
    ClientError,
    ErrorInfo,
    EventRejectedError,
    IdempotencyConflictError,
    IllegalTransitionError,
    InvalidRequestError,
    LeaseLostError,
    PayloadError,
    PayloadTooLargeError,
    RunNotFoundError,
    StorageError,
    UnauthorizedError,
    WorkflowNotFoundError,
)

# Integers that end up in storage columns (64-bit) and strings that name things.
Count = Annotated[int, pydantic.Field(ge=0, le=2**63 - 1)]
Positive = Annotated[int, pydantic.Field(ge=1, le=2**63 - 1)]
Name = Annotated[str, pydantic.Field(min_length=1)]

FinalState: TypeAlias = Literal["completed", "failed", "cancelled"]

# --- records -------------------------------------------------------------------------------


class ErrorInfoBody(TypedDict):
    """Why a run or task failed: the exception's type, message and traceback, as text."""

    type: str
    message: str
    traceback: NotRequired[str | None]


class WorkflowKeyBody(TypedDict):
    """A workflow definition: name and version."""

    name: Name
    version: Name


class WaitInfoBody(TypedDict):
    """What a waiting run waits for, and until when (storage clock, ms since the epoch)."""

    kind: WaitKind
    until_ms: Count | None  # None: no timer (a wait for an event without a timeout)
    detail: NotRequired[str]


class RunStatusBody(TypedDict):
    """A run as stored. `payload_json` and `result_json` are canonical JSON text."""

    id: str
    workflow: str
    version: str
    state: RunState
    payload_json: str
    result_json: str | None
    error: ErrorInfoBody | None
    idempotency_key: str | None
    attempt: int
    recovery_attempts: int
    revision: int
    wait: WaitInfoBody | None
    worker_id: str | None
    lease_expires_at_ms: int | None
    cancel_requested: bool
    cancel_reason: str | None
    created_at_ms: int
    updated_at_ms: int
    note: NotRequired[str | None]


class HistoryEventBody(TypedDict):
    """One entry of a run's audit trail."""

    seq: int
    at_ms: int
    kind: EventKind
    state: RunState
    data: dict[str, Any]


class TaskAddressBody(TypedDict):
    """Where a task call's result is recorded."""

    task: Name
    digest: Name
    index: Count


class TaskRecordBody(TypedDict):
    """What storage holds for one task address. `result_json` is canonical JSON text."""

    address: TaskAddressBody
    outcome: TaskOutcome
    attempts: int
    result_json: str | None
    error: ErrorInfoBody | None


class ClaimedRunBody(TypedDict):
    """A run a worker now holds, with its recorded task results."""

    run: RunStatusBody
    revision: int
    now_ms: int
    tasks: list[TaskRecordBody]


class WorkerInfoBody(TypedDict):
    """A worker the server has heard from."""

    id: str
    workflows: list[WorkflowKeyBody]
    last_seen_ms: int
    alive_until_ms: int
    alive: bool


class WorkflowSummaryBody(TypedDict):
    """A workflow version, its live workers and its run counts by state."""

    name: str
    version: str
    live_workers: list[str]
    runs: dict[str, int]


class LeaseBody(TypedDict):
    """A worker's hold on a run."""

    run_id: Name
    revision: Count


# --- requests ------------------------------------------------------------------------------


class NewRunBody(TypedDict):
    """`POST /v1/runs`: `payload_json` is the payload's canonical JSON text."""

    workflow: Name
    version: Name
    payload_json: str
    idempotency_key: NotRequired[Name | None]
    require_known: NotRequired[bool]


class SendEventBody(TypedDict):
    """`POST /v1/runs/{run_id}/events`: `data_json` is the data's canonical JSON text."""

    name: Name
    data_json: str
    idempotency_key: NotRequired[Name | None]


class EventSentBody(TypedDict):
    """The stored event's seq; `created` is false when its idempotency key was known."""

    seq: Count
    created: bool


class NextEventBody(TypedDict):
    """`POST /v1/runs/{run_id}/events/next`, under the lease `revision`."""

    revision: Count
    name: Name
    after_seq: Count


class RunEventBody(TypedDict):
    """An event sent to a run; `data_json` is its data's JSON text."""

    seq: Count
    name: str
    data_json: str


class NextEventReplyBody(TypedDict):
    """The first matching event, or null when there is none yet."""

    event: RunEventBody | None


class WaitQuery(TypedDict):
    """`GET /v1/runs/{run_id}/wait`: seconds to wait at most (the server caps each request)."""

    timeout_s: NotRequired[Annotated[float, pydantic.Field(ge=0, allow_inf_nan=False)]]


class CancelBody(TypedDict):
    """`POST /v1/runs/{run_id}/cancel`."""

    reason: NotRequired[str | None]


class ListRunsQuery(TypedDict):
    """`GET /v1/runs`: filters, and `after` = the last id of the previous page."""

    workflow: NotRequired[Name]
    state: NotRequired[RunState]
    after: NotRequired[Name]
    limit: NotRequired[Annotated[int, pydantic.Field(ge=1, le=1000)]]


class RegisterWorkerBody(TypedDict):
    """`POST /v1/workers/register`."""

    worker_id: Name
    workflows: list[WorkflowKeyBody]
    lease_ms: Positive


class UnregisterWorkerBody(TypedDict):
    """`POST /v1/workers/unregister`."""

    worker_id: Name


class PollRequestBody(TypedDict):
    """`POST /v1/workers/poll`: up to `capacity` runs, waiting up to `wait_ms` for some."""

    worker_id: Name
    workflows: list[WorkflowKeyBody]
    capacity: Count
    lease_ms: Positive
    wait_ms: Count
    recheck_ms: Positive


class HeartbeatBody(TypedDict):
    """`POST /v1/workers/heartbeat`: extend these leases by `lease_ms`."""

    worker_id: Name
    leases: list[LeaseBody]
    lease_ms: Positive


class TaskStartBody(TypedDict):
    """A task attempt beginning."""

    address: TaskAddressBody
    attempt: Positive
    worker_id: Name


class TaskEndBody(TypedDict):
    """A task attempt ending. `result_json` is canonical JSON text."""

    address: TaskAddressBody
    attempt: Positive
    worker_id: Name
    outcome: TaskOutcome
    duration_ms: Count
    result_json: NotRequired[str | None]
    error: NotRequired[ErrorInfoBody | None]
    retry_delay_ms: NotRequired[Count | None]
    start_reported: NotRequired[bool]


class RunOutcomeBody(TypedDict):
    """How a worker ends a run. `result_json` is canonical JSON text."""

    state: FinalState
    result_json: NotRequired[str | None]
    error: NotRequired[ErrorInfoBody | None]
    reason: NotRequired[str | None]


class StartTaskBody(TypedDict):
    """`POST /v1/runs/{run_id}/tasks/start`, under the lease `revision`."""

    revision: Count
    start: TaskStartBody


class FinishTaskBody(TypedDict):
    """`POST /v1/runs/{run_id}/tasks/finish`, under the lease `revision`."""

    revision: Count
    end: TaskEndBody


class SuspendBody(TypedDict):
    """`POST /v1/runs/{run_id}/suspend`, under the lease `revision`."""

    revision: Count
    wait: WaitInfoBody


class ReleaseBody(TypedDict):
    """`POST /v1/runs/{run_id}/release`, under the lease `revision`."""

    revision: Count


class FinishBody(TypedDict):
    """`POST /v1/runs/{run_id}/finish`, under the lease `revision`."""

    revision: Count
    outcome: RunOutcomeBody


# --- replies -------------------------------------------------------------------------------


class EnqueuedBody(TypedDict):
    """The run an enqueue created (`created`) or found by its idempotency key."""

    id: str
    created: bool


class HistoryBody(TypedDict):
    """A run's history, oldest first."""

    events: list[HistoryEventBody]


class RunPageBody(TypedDict):
    """One page of runs, newest first; pass `next_after` as `after` for the next page."""

    runs: list[RunStatusBody]
    next_after: str | None


class WorkersBody(TypedDict):
    """Every worker the server has heard from."""

    workers: list[WorkerInfoBody]


class WorkflowsBody(TypedDict):
    """Every workflow version the server knows."""

    workflows: list[WorkflowSummaryBody]


class PollReplyBody(TypedDict):
    """Runs claimed for the worker, and runs it holds whose cancellation was asked for."""

    claimed: list[ClaimedRunBody]
    cancel_requested: list[str]


class HeartbeatReplyBody(TypedDict):
    """Leases no longer held, and held runs whose cancellation was asked for."""

    lost: list[str]
    cancel_requested: list[str]


class FinishTaskReplyBody(TypedDict):
    """Whether the run's cancellation was asked for."""

    cancel_requested: bool


class HealthBody(TypedDict):
    """`GET /health`."""

    status: Literal["ok"]


class ErrorBody(TypedDict):
    """Every error reply: a stable `code`, a message, and the error's attributes."""

    code: str
    message: str
    run_id: NotRequired[str]
    workflow: NotRequired[str]
    version: NotRequired[str]
    idempotency_key: NotRequired[str | None]
    name: NotRequired[str]
    revision: NotRequired[int]
    current: NotRequired[str]
    action: NotRequired[str]
    size: NotRequired[int]
    limit: NotRequired[int]
    field: NotRequired[str | None]
    known: NotRequired[list[str]]


# --- converters: records -------------------------------------------------------------------


def dump_error_info(error: ErrorInfo) -> ErrorInfoBody:
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def load_error_info(body: ErrorInfoBody) -> ErrorInfo:
    return ErrorInfo(type=body["type"], message=body["message"], traceback=body.get("traceback"))


def _dump_error(error: ErrorInfo | None) -> ErrorInfoBody | None:
    return None if error is None else dump_error_info(error)


def _load_error(body: ErrorInfoBody | None) -> ErrorInfo | None:
    return None if body is None else load_error_info(body)


def dump_workflow_key(key: WorkflowKey) -> WorkflowKeyBody:
    return {"name": key.name, "version": key.version}


def load_workflow_key(body: WorkflowKeyBody) -> WorkflowKey:
    return WorkflowKey(name=body["name"], version=body["version"])


def dump_wait_info(wait: WaitInfo) -> WaitInfoBody:
    return {"kind": wait.kind, "until_ms": wait.until_ms, "detail": wait.detail}


def load_wait_info(body: WaitInfoBody) -> WaitInfo:
    return WaitInfo(kind=body["kind"], until_ms=body["until_ms"], detail=body.get("detail", ""))


def dump_run_status(run: RunStatus) -> RunStatusBody:
    return {
        "id": run.id,
        "workflow": run.workflow,
        "version": run.version,
        "state": run.state,
        "payload_json": run.payload_json,
        "result_json": run.result_json,
        "error": _dump_error(run.error),
        "idempotency_key": run.idempotency_key,
        "attempt": run.attempt,
        "recovery_attempts": run.recovery_attempts,
        "revision": run.revision,
        "wait": None if run.wait is None else dump_wait_info(run.wait),
        "worker_id": run.worker_id,
        "lease_expires_at_ms": run.lease_expires_at_ms,
        "cancel_requested": run.cancel_requested,
        "cancel_reason": run.cancel_reason,
        "created_at_ms": run.created_at_ms,
        "updated_at_ms": run.updated_at_ms,
        "note": run.note,
    }


def load_run_status(body: RunStatusBody) -> RunStatus:
    wait = body["wait"]
    worker_id = body["worker_id"]
    return RunStatus(
        id=RunId(body["id"]),
        workflow=body["workflow"],
        version=body["version"],
        state=body["state"],
        payload_json=body["payload_json"],
        result_json=body["result_json"],
        error=_load_error(body["error"]),
        idempotency_key=body["idempotency_key"],
        attempt=body["attempt"],
        recovery_attempts=body["recovery_attempts"],
        revision=body["revision"],
        wait=None if wait is None else load_wait_info(wait),
        worker_id=None if worker_id is None else WorkerId(worker_id),
        lease_expires_at_ms=body["lease_expires_at_ms"],
        cancel_requested=body["cancel_requested"],
        cancel_reason=body["cancel_reason"],
        created_at_ms=body["created_at_ms"],
        updated_at_ms=body["updated_at_ms"],
        note=body.get("note"),
    )


def dump_history_event(event: HistoryEvent) -> HistoryEventBody:
    return {
        "seq": event.seq,
        "at_ms": event.at_ms,
        "kind": event.kind,
        "state": event.state,
        "data": event.data,
    }


def load_history_event(body: HistoryEventBody) -> HistoryEvent:
    return HistoryEvent(
        seq=body["seq"],
        at_ms=body["at_ms"],
        kind=body["kind"],
        state=body["state"],
        data=body["data"],
    )


def dump_task_address(address: TaskAddress) -> TaskAddressBody:
    return {"task": address.task, "digest": address.digest, "index": address.index}


def load_task_address(body: TaskAddressBody) -> TaskAddress:
    return TaskAddress(task=body["task"], digest=body["digest"], index=body["index"])


def dump_task_record(record: TaskRecord) -> TaskRecordBody:
    return {
        "address": dump_task_address(record.address),
        "outcome": record.outcome,
        "attempts": record.attempts,
        "result_json": record.result_json,
        "error": _dump_error(record.error),
    }


def load_task_record(body: TaskRecordBody) -> TaskRecord:
    return TaskRecord(
        address=load_task_address(body["address"]),
        outcome=body["outcome"],
        attempts=body["attempts"],
        result_json=body["result_json"],
        error=_load_error(body["error"]),
    )


def dump_claimed_run(claimed: ClaimedRun) -> ClaimedRunBody:
    return {
        "run": dump_run_status(claimed.run),
        "revision": claimed.revision,
        "now_ms": claimed.now_ms,
        "tasks": [dump_task_record(t) for t in claimed.tasks],
    }


def load_claimed_run(body: ClaimedRunBody) -> ClaimedRun:
    return ClaimedRun(
        run=load_run_status(body["run"]),
        revision=body["revision"],
        now_ms=body["now_ms"],
        tasks=tuple(load_task_record(t) for t in body["tasks"]),
    )


def dump_worker_info(worker: WorkerInfo) -> WorkerInfoBody:
    return {
        "id": worker.id,
        "workflows": [dump_workflow_key(k) for k in worker.workflows],
        "last_seen_ms": worker.last_seen_ms,
        "alive_until_ms": worker.alive_until_ms,
        "alive": worker.alive,
    }


def load_worker_info(body: WorkerInfoBody) -> WorkerInfo:
    return WorkerInfo(
        id=WorkerId(body["id"]),
        workflows=tuple(load_workflow_key(k) for k in body["workflows"]),
        last_seen_ms=body["last_seen_ms"],
        alive_until_ms=body["alive_until_ms"],
        alive=body["alive"],
    )


def dump_workflow_summary(summary: WorkflowSummary) -> WorkflowSummaryBody:
    return {
        "name": summary.name,
        "version": summary.version,
        "live_workers": list(summary.live_workers),
        "runs": dict(summary.runs),
    }


def load_workflow_summary(body: WorkflowSummaryBody) -> WorkflowSummary:
    return WorkflowSummary(
        name=body["name"],
        version=body["version"],
        live_workers=tuple(WorkerId(w) for w in body["live_workers"]),
        runs=dict(body["runs"]),
    )


def dump_lease(lease: Lease) -> LeaseBody:
    return {"run_id": lease.run_id, "revision": lease.revision}


def load_lease(body: LeaseBody) -> Lease:
    return Lease(run_id=RunId(body["run_id"]), revision=body["revision"])


# --- converters: requests and replies ------------------------------------------------------


def dump_new_run(new: NewRun) -> NewRunBody:
    return {
        "workflow": new.workflow,
        "version": new.version,
        "payload_json": new.payload_json,
        "idempotency_key": new.idempotency_key,
        "require_known": new.require_known,
    }


def load_new_run(body: NewRunBody) -> NewRun:
    return NewRun(
        workflow=body["workflow"],
        version=body["version"],
        payload_json=body["payload_json"],
        idempotency_key=body.get("idempotency_key"),
        require_known=body.get("require_known", False),
    )


def dump_send_event(new: NewEvent) -> SendEventBody:
    return {"name": new.name, "data_json": new.data_json, "idempotency_key": new.idempotency_key}


def load_send_event(run_id: RunId, body: SendEventBody) -> NewEvent:
    return NewEvent(
        run_id=run_id,
        name=body["name"],
        data_json=body["data_json"],
        idempotency_key=body.get("idempotency_key"),
    )


def dump_event_sent(sent: EventSent) -> EventSentBody:
    return {"seq": sent.seq, "created": sent.created}


def load_event_sent(body: EventSentBody) -> EventSent:
    return EventSent(seq=body["seq"], created=body["created"])


def dump_next_event_reply(event: RunEvent | None) -> NextEventReplyBody:
    if event is None:
        return {"event": None}
    return {"event": {"seq": event.seq, "name": event.name, "data_json": event.data_json}}


def load_next_event_reply(body: NextEventReplyBody) -> RunEvent | None:
    event = body["event"]
    if event is None:
        return None
    return RunEvent(seq=event["seq"], name=event["name"], data_json=event["data_json"])


def dump_enqueued(enqueued: Enqueued) -> EnqueuedBody:
    return {"id": enqueued.id, "created": enqueued.created}


def load_enqueued(body: EnqueuedBody) -> Enqueued:
    return Enqueued(id=RunId(body["id"]), created=body["created"])


def dump_history(events: list[HistoryEvent]) -> HistoryBody:
    return {"events": [dump_history_event(e) for e in events]}


def load_history(body: HistoryBody) -> list[HistoryEvent]:
    return [load_history_event(e) for e in body["events"]]


def dump_run_page(runs: list[RunStatus], *, limit: int) -> RunPageBody:
    """A page of runs; a full page points at the next one (which may turn out empty)."""
    return {
        "runs": [dump_run_status(r) for r in runs],
        "next_after": runs[-1].id if runs and len(runs) >= limit else None,
    }


def load_run_page(body: RunPageBody) -> list[RunStatus]:
    return [load_run_status(r) for r in body["runs"]]


def dump_workers(workers: list[WorkerInfo]) -> WorkersBody:
    return {"workers": [dump_worker_info(w) for w in workers]}


def load_workers(body: WorkersBody) -> list[WorkerInfo]:
    return [load_worker_info(w) for w in body["workers"]]


def dump_workflows(workflows: list[WorkflowSummary]) -> WorkflowsBody:
    return {"workflows": [dump_workflow_summary(w) for w in workflows]}


def load_workflows(body: WorkflowsBody) -> list[WorkflowSummary]:
    return [load_workflow_summary(w) for w in body["workflows"]]


def dump_poll_request(request: PollRequest) -> PollRequestBody:
    return {
        "worker_id": request.worker_id,
        "workflows": [dump_workflow_key(k) for k in request.workflows],
        "capacity": request.capacity,
        "lease_ms": request.lease_ms,
        "wait_ms": request.wait_ms,
        "recheck_ms": request.recheck_ms,
    }


def load_poll_request(body: PollRequestBody) -> PollRequest:
    return PollRequest(
        worker_id=WorkerId(body["worker_id"]),
        workflows=tuple(load_workflow_key(k) for k in body["workflows"]),
        capacity=body["capacity"],
        lease_ms=body["lease_ms"],
        wait_ms=body["wait_ms"],
        recheck_ms=body["recheck_ms"],
    )


def dump_poll_reply(reply: PollReply) -> PollReplyBody:
    return {
        "claimed": [dump_claimed_run(c) for c in reply.claimed],
        "cancel_requested": list(reply.cancel_requested),
    }


def load_poll_reply(body: PollReplyBody) -> PollReply:
    return PollReply(
        claimed=tuple(load_claimed_run(c) for c in body["claimed"]),
        cancel_requested=tuple(RunId(r) for r in body["cancel_requested"]),
    )


def dump_heartbeat_reply(reply: HeartbeatReply) -> HeartbeatReplyBody:
    return {"lost": list(reply.lost), "cancel_requested": list(reply.cancel_requested)}


def load_heartbeat_reply(body: HeartbeatReplyBody) -> HeartbeatReply:
    return HeartbeatReply(
        lost=tuple(RunId(r) for r in body["lost"]),
        cancel_requested=tuple(RunId(r) for r in body["cancel_requested"]),
    )


def dump_task_start(start: TaskStart) -> TaskStartBody:
    return {
        "address": dump_task_address(start.address),
        "attempt": start.attempt,
        "worker_id": start.worker_id,
    }


def load_task_start(body: TaskStartBody) -> TaskStart:
    return TaskStart(
        address=load_task_address(body["address"]),
        attempt=body["attempt"],
        worker_id=WorkerId(body["worker_id"]),
    )


def dump_task_end(end: TaskEnd) -> TaskEndBody:
    return {
        "address": dump_task_address(end.address),
        "attempt": end.attempt,
        "worker_id": end.worker_id,
        "outcome": end.outcome,
        "duration_ms": end.duration_ms,
        "result_json": end.result_json,
        "error": _dump_error(end.error),
        "retry_delay_ms": end.retry_delay_ms,
        "start_reported": end.start_reported,
    }


def load_task_end(body: TaskEndBody) -> TaskEnd:
    return TaskEnd(
        address=load_task_address(body["address"]),
        attempt=body["attempt"],
        worker_id=WorkerId(body["worker_id"]),
        outcome=body["outcome"],
        duration_ms=body["duration_ms"],
        result_json=body.get("result_json"),
        error=_load_error(body.get("error")),
        retry_delay_ms=body.get("retry_delay_ms"),
        start_reported=body.get("start_reported", True),
    )


_FINAL: Final[dict[str, Literal[RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED]]] = {
    "completed": RunState.COMPLETED,
    "failed": RunState.FAILED,
    "cancelled": RunState.CANCELLED,
}


def dump_run_outcome(outcome: RunOutcome) -> RunOutcomeBody:
    return {
        "state": cast(FinalState, outcome.state.value),
        "result_json": outcome.result_json,
        "error": _dump_error(outcome.error),
        "reason": outcome.reason,
    }


def load_run_outcome(body: RunOutcomeBody) -> RunOutcome:
    return RunOutcome(
        state=_FINAL[body["state"]],
        result_json=body.get("result_json"),
        error=_load_error(body.get("error")),
        reason=body.get("reason"),
    )


# --- errors --------------------------------------------------------------------------------


_Dump: TypeAlias = Callable[[Any], ErrorBody]
_Load: TypeAlias = Callable[[ErrorBody], AikiError]


def _dump_run_not_found(exc: RunNotFoundError) -> ErrorBody:
    return {"code": "run_not_found", "message": str(exc), "run_id": exc.run_id}


def _dump_workflow_not_found(exc: WorkflowNotFoundError) -> ErrorBody:
    return {
        "code": "workflow_not_found",
        "message": str(exc),
        "workflow": exc.workflow,
        "version": exc.version,
        "known": list(exc.known),
        "field": "workflow",
    }


def _dump_conflict(exc: IdempotencyConflictError) -> ErrorBody:
    return {
        "code": "idempotency_conflict",
        "message": str(exc),
        "workflow": exc.workflow,
        "version": exc.version,
        "idempotency_key": exc.idempotency_key,
        "run_id": exc.run_id,
    }


def _dump_event_rejected(exc: EventRejectedError) -> ErrorBody:
    return {
        "code": "event_rejected",
        "message": str(exc),
        "run_id": exc.run_id,
        "name": exc.name,
        "idempotency_key": exc.idempotency_key,
    }


def _dump_lease_lost(exc: LeaseLostError) -> ErrorBody:
    return {
        "code": "lease_lost",
        "message": str(exc),
        "run_id": exc.run_id,
        "revision": exc.revision,
    }


def _dump_illegal(exc: IllegalTransitionError) -> ErrorBody:
    return {
        "code": "illegal_transition",
        "message": str(exc),
        "run_id": exc.run_id,
        "current": exc.current,
        "action": exc.action,
    }


def _dump_too_large(exc: PayloadTooLargeError) -> ErrorBody:
    return {"code": "payload_too_large", "message": str(exc), "size": exc.size, "limit": exc.limit}


def _dump_invalid(exc: InvalidRequestError) -> ErrorBody:
    return {"code": "invalid_request", "message": str(exc), "field": exc.field}


def _plain(code: str) -> _Dump:
    def dump(exc: AikiError) -> ErrorBody:
        return {"code": code, "message": str(exc)}

    return dump


# class → (code, HTTP status, to body, from body). Subclasses are found before their bases
# because the lookup walks the exception's MRO.
_ERRORS: Final[dict[type[BaseException], tuple[str, int, _Dump, _Load]]] = {
    RunNotFoundError: (
        "run_not_found",
        404,
        _dump_run_not_found,
        lambda b: RunNotFoundError(b["run_id"]),
    ),
    WorkflowNotFoundError: (
        "workflow_not_found",
        404,
        _dump_workflow_not_found,
        lambda b: WorkflowNotFoundError(
            workflow=b["workflow"], version=b["version"], known=b.get("known", [])
        ),
    ),
    IdempotencyConflictError: (
        "idempotency_conflict",
        409,
        _dump_conflict,
        lambda b: IdempotencyConflictError(
            workflow=b["workflow"],
            version=b["version"],
            idempotency_key=b.get("idempotency_key") or "",
            run_id=b["run_id"],
        ),
    ),
    EventRejectedError: (
        "event_rejected",
        409,
        _dump_event_rejected,
        lambda b: EventRejectedError(
            b["message"],
            run_id=b["run_id"],
            name=b["name"],
            idempotency_key=b.get("idempotency_key"),
        ),
    ),
    LeaseLostError: (
        "lease_lost",
        409,
        _dump_lease_lost,
        lambda b: LeaseLostError(b["run_id"], b["revision"]),
    ),
    IllegalTransitionError: (
        "illegal_transition",
        409,
        _dump_illegal,
        lambda b: IllegalTransitionError(b["run_id"], b["current"], b["action"]),
    ),
    PayloadTooLargeError: (
        "payload_too_large",
        413,
        _dump_too_large,
        lambda b: PayloadTooLargeError(b["message"], size=b["size"], limit=b["limit"]),
    ),
    PayloadError: (
        "payload_invalid",
        422,
        _plain("payload_invalid"),
        lambda b: PayloadError(b["message"]),
    ),
    InvalidRequestError: (
        "invalid_request",
        422,
        _dump_invalid,
        lambda b: InvalidRequestError(b["message"], field=b.get("field")),
    ),
    UnauthorizedError: (
        "unauthorized",
        401,
        _plain("unauthorized"),
        lambda b: UnauthorizedError(b["message"]),
    ),
    StorageError: (
        "storage_error",
        503,
        _plain("storage_error"),
        lambda b: StorageError(b["message"]),
    ),
}

ERROR_CODES: Final[dict[str, int]] = {code: status for code, status, _, _ in _ERRORS.values()}
"""Every stable error code, with the HTTP status it is sent with."""

_BY_CODE: Final[dict[str, _Load]] = {code: load for code, _, _, load in _ERRORS.values()}


def dump_error(exc: BaseException) -> tuple[int, ErrorBody] | None:
    """The HTTP status and body for `exc`, or None if it is not an error the API reports."""
    for kind in type(exc).__mro__:
        entry = _ERRORS.get(kind)
        if entry is not None:
            _, status, dump, _ = entry
            if isinstance(exc, InvalidRequestError) and exc.field is None:
                status = 400  # not JSON at all: nothing to point at
            return status, dump(exc)
    return None


def load_error(body: ErrorBody) -> AikiError:
    """The exception an error body stands for: the class the in-process service raises.

    An unknown code, or a body that lacks the attributes its code needs, gives a `ClientError`
    with the server's message.
    """
    load = _BY_CODE.get(body["code"])
    if load is not None:
        try:
            return load(body)
        except (KeyError, TypeError, ValueError):
            pass
    return ClientError(f"{body['code']}: {body['message']}")


# --- validation ----------------------------------------------------------------------------

T = TypeVar("T")


class Schema(Generic[T]):
    """A body type with its pydantic adapter, built on first use (import stays cheap)."""

    __slots__ = ("_adapter", "body")

    def __init__(self, body: type[T]) -> None:
        self.body = body
        self._adapter: pydantic.TypeAdapter[T] | None = None

    @property
    def adapter(self) -> pydantic.TypeAdapter[T]:
        if self._adapter is None:
            self._adapter = pydantic.TypeAdapter(self.body)
        return self._adapter

    @property
    def name(self) -> str:
        return self.body.__name__

    def from_json(self, data: bytes) -> T:
        """Validate JSON text strictly: a string is not a number, a float is not an int.

        Raises:
            pydantic.ValidationError: what is wrong, and where.
        """
        return self.adapter.validate_json(data, strict=True)

    def from_query(self, params: dict[str, str]) -> T:
        """Validate query parameters, which are all strings: "10" may be an int here."""
        return self.adapter.validate_python(params)
