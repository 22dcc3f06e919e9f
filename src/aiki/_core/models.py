"""Records that storage, server, client and worker pass between them.

These dataclasses are also the HTTP API's bodies: `aiki._http` encodes and decodes them with
msgspec, which reads the bounds in the annotations below (`Name`, `Count`, `Positive`) when a
record arrives from outside. In-process callers are not checked against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from msgspec import Meta

from aiki._core.clock import to_datetime
from aiki._core.ids import RunId, WorkerId
from aiki._core.serde import DEFAULT_MAX_PAYLOAD_BYTES, JSONValue, loads
from aiki._core.states import RunState
from aiki.errors import ErrorInfo

# Bounds of what a request may carry: storage columns are 64-bit, names are never empty.
Name = Annotated[str, Meta(min_length=1)]
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Positive = Annotated[int, Meta(ge=1, le=2**63 - 1)]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowKey:
    """A workflow definition: its name and version."""

    name: Name
    version: Name

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServedVersion:
    """A workflow version as a worker registers it: its key and what payload it takes."""

    name: Name
    version: Name
    # The JSON Schema of the payload type (canonical JSON text), or None for any JSON value.
    # The server checks payloads enqueued by name (CLI, HTTP) against it.
    payload_schema_json: str | None = None

    @property
    def key(self) -> WorkflowKey:
        return WorkflowKey(name=self.name, version=self.version)


class WaitKind(StrEnum):
    """Why a run is `waiting`."""

    RETRY = "retry"  # a task's retry backoff
    SLEEP = "sleep"  # `workflow_run.sleep(...)`
    EVENT = "event"  # `workflow_run.wait_for_event(...)`: woken by a matching event or its timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitInfo:
    """What a waiting run waits for, and until when."""

    kind: WaitKind
    until_ms: Count | None  # None: no timer; only an event ends the wait
    detail: str = ""  # e.g. the task being retried

    @property
    def until(self) -> datetime | None:
        """When the wait ends at the latest (storage clock), if it has a timeout."""
        return None if self.until_ms is None else to_datetime(self.until_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStatus:
    """A run as stored: what `RunHandle.get_status()` returns.

    The payload and result are kept as the canonical JSON text the SDK encoded: storage, server
    and client pass them on without parsing. `payload` and `result` parse that text on demand;
    a handle built from a typed workflow decodes the result into the workflow's return type.
    """

    id: RunId
    workflow: str
    version: str
    state: RunState
    payload_json: str
    result_json: str | None = None
    error: ErrorInfo | None = None
    idempotency_key: str | None = None
    attempt: int = 0  # how many times a worker has taken the run
    recovery_attempts: int = 0  # how many of those followed a lost lease
    revision: int = 0
    wait: WaitInfo | None = None
    worker_id: WorkerId | None = None
    lease_expires_at_ms: int | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    created_at_ms: int
    updated_at_ms: int
    note: str | None = None  # e.g. that no live worker serves this version

    @property
    def payload(self) -> JSONValue:
        """The run's input, as a JSON value."""
        return loads(self.payload_json)

    @property
    def result(self) -> JSONValue:
        """The run's result as a JSON value; None until it completes."""
        return None if self.result_json is None else loads(self.result_json)

    @property
    def name(self) -> str:
        """The workflow's name (alias of `workflow`)."""
        return self.workflow

    @property
    def created_at(self) -> datetime:
        """When the run was enqueued."""
        return to_datetime(self.created_at_ms)

    @property
    def updated_at(self) -> datetime:
        """When the run last changed."""
        return to_datetime(self.updated_at_ms)


class EventKind(StrEnum):
    """Entries of a run's history."""

    ENQUEUED = "run_enqueued"
    CLAIMED = "run_claimed"
    RELEASED = "run_released"
    LEASE_EXPIRED = "lease_expired"
    SUSPENDED = "run_waiting"
    WOKEN = "run_woken"
    TASK_STARTED = "task_started"
    TASK_COMPLETED = "task_completed"
    TASK_FAILED = "task_failed"
    CANCEL_REQUESTED = "cancel_requested"
    EVENT_SENT = "event_sent"  # `send_event` stored an event for the run
    COMPLETED = "run_completed"
    FAILED = "run_failed"
    CANCELLED = "run_cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEvent:
    """One entry of a run's audit trail."""

    seq: int
    at_ms: int
    kind: EventKind
    state: RunState  # the run's state right after this event
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def at(self) -> datetime:
        """When it happened (storage clock)."""
        return to_datetime(self.at_ms)


# --- requests and replies between client, server and storage ---------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRun:
    """An enqueue request, its payload encoded as JSON text."""

    workflow: Name
    version: Name
    payload_json: str
    idempotency_key: Name | None = None
    # True when the SDK encoded the payload (canonical text, checked against the workflow's
    # payload type): the server stores the text as sent, unparsed. Otherwise, for an enqueue by
    # name (CLI, HTTP), the server parses it once to store and compare its canonical form.
    checked: bool = False
    # A version no worker has ever registered is refused (with the versions that are known),
    # so a typo or an undeployed version does not wait forever; True takes it anyway, for a
    # worker that is yet to be deployed.
    allow_unknown: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RunsEnded:
    """What a wait on many runs saw: the ones that had ended, and ids no run has."""

    ended: tuple[RunStatus, ...] = ()
    missing: tuple[RunId, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueued:
    """The run an enqueue created (`created`) or, for a known idempotency key, found."""

    id: RunId
    created: bool


class TaskOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"  # final: the workflow sees TaskFailedError
    RETRYING = "retrying"  # failed, another attempt will follow


# A durable sleep (`workflow_run.sleep(name, ...)`) is recorded as a completed task named
# `aiki.sleep/<name>` (user tasks may not use `aiki.` names), with a fixed payload digest and
# the sleep's occurrence as index; its result is `{"duration_ms": ..., "until_ms": ...}`.
SLEEP_TASK_PREFIX = "aiki.sleep/"


def sleep_name(task: str) -> str | None:
    """The sleep's name if `task` is a sleep's record, else None."""
    return task.removeprefix(SLEEP_TASK_PREFIX) if task.startswith(SLEEP_TASK_PREFIX) else None


# `workflow_run.wait_for_event(name, ...)` is recorded at `aiki.event/<name>`, the wait's
# occurrence as index. Its outcome sits at one of two digests: `EVENT_RECEIVED_DIGEST`
# (`{"seq": ..., "data": ...}`, the consumed event) or `EVENT_TIMEOUT_DIGEST`
# (`{"until_ms": ...}`). A wait with a timeout first records its deadline at
# `EVENT_DEADLINE_DIGEST` (`{"until_ms": ...}`), so a replay waits for the same deadline.
# Storage counts the received records of a name to know whether a run has events of that
# name it has not consumed yet.
EVENT_TASK_PREFIX = "aiki.event/"
EVENT_RECEIVED_DIGEST = "received"
EVENT_TIMEOUT_DIGEST = "timeout"
EVENT_DEADLINE_DIGEST = "deadline"


# Longer event names are refused: a name is a label, not a place for data.
MAX_EVENT_NAME_LENGTH = 200


def check_event_name(value: object) -> str:
    """An event's name: a non-empty str of at most `MAX_EVENT_NAME_LENGTH` characters.

    Raises:
        TypeError: `value` is not a str.
        ValueError: it is empty (or only spaces), or too long.
    """
    if not isinstance(value, str):
        raise TypeError(f"event name must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("event name must not be empty")
    if len(value) > MAX_EVENT_NAME_LENGTH:
        raise ValueError(
            f"event name must be at most {MAX_EVENT_NAME_LENGTH} characters, got {len(value)}"
        )
    return value


def event_name(task: str) -> str | None:
    """The event's name if `task` is a `wait_for_event` record, else None."""
    return task.removeprefix(EVENT_TASK_PREFIX) if task.startswith(EVENT_TASK_PREFIX) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEvent:
    """A `send_event` request, its data already validated and encoded."""

    run_id: RunId
    name: Name
    data_json: str
    idempotency_key: Name | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventSent:
    """What `RunHandle.send_event` returns: the event's seq, and whether this send stored it.

    `seq` is the event's place in send order; `created` is False when its idempotency key was
    known (the event sent first is returned). `woken` and `workflow` are between storage and
    server only: a client sees their defaults.
    """

    seq: int
    created: bool
    woken: bool = False  # the send moved the run from waiting to pending
    workflow: WorkflowKey | None = None  # the run's workflow, set when `woken`


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEvent:
    """An event sent to a run, as a worker reads it."""

    seq: int
    name: str
    data_json: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskAddress:
    """Where a task call's result is recorded: its name, payload digest and occurrence.

    The n-th call (from 0) with the same name and payload in a run gets `index` n, so
    identical calls replay their own results, in call order.
    """

    task: Name
    digest: Name
    index: Count = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRecord:
    """What storage holds for one task address: the replay input."""

    address: TaskAddress
    outcome: TaskOutcome
    attempts: int  # attempts that ended (completed or failed); interrupted ones don't count
    result_json: str | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStart:
    address: TaskAddress
    attempt: Positive
    worker_id: Annotated[WorkerId, Meta(min_length=1)]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskEnd:
    address: TaskAddress
    attempt: Positive
    worker_id: Annotated[WorkerId, Meta(min_length=1)]
    outcome: TaskOutcome
    duration_ms: Count
    result_json: str | None = None
    error: ErrorInfo | None = None
    retry_delay_ms: Count | None = None  # with RETRYING: when the next attempt is due
    # False when the attempt ended before its start was written: storage then records the
    # start too, just before the end (one write for a quick task instead of two).
    start_reported: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedRun:
    """A run a worker now holds, with everything it needs to replay it."""

    run: RunStatus
    revision: int
    now_ms: int  # storage clock at the claim
    tasks: tuple[TaskRecord, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A worker's hold on a run: valid while the run's revision is still this one."""

    run_id: Annotated[RunId, Meta(min_length=1)]
    revision: Count


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatReply:
    lost: tuple[RunId, ...] = ()  # leases no longer held: stop working on these
    cancel_requested: tuple[RunId, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOutcome:
    """How a worker ends a run."""

    state: RunState  # completed, failed or cancelled
    result_json: str | None = None
    error: ErrorInfo | None = None
    reason: str | None = None
    # Task ends not written yet, recorded with the run's end in the same transaction: a
    # worker keeps a quick task's result until the run's next write (see
    # `aiki.worker._writes`), so a run of quick tasks ends in one write, not one per task.
    task_ends: tuple[TaskEnd, ...] = ()

    def __post_init__(self) -> None:
        if not self.state.is_final:
            # Named as msgspec names a field, so an HTTP error points at `outcome.state`.
            raise ValueError(f"`state` must be completed, failed or cancelled, not {self.state}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerReport:
    """What one pass of the timers did."""

    woken: tuple[RunId, ...] = ()
    expired: tuple[RunId, ...] = ()  # lease lost; back to pending
    ended: tuple[RunId, ...] = ()  # lease lost for the last allowed time, or cancelled: final
    next_due_ms: int | None = None
    now_ms: int | None = None  # the storage clock when the pass looked: next_due_ms is on it


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """A worker the server has heard from."""

    id: WorkerId
    workflows: tuple[WorkflowKey, ...]
    last_seen_ms: int
    alive_until_ms: int  # last heartbeat + its lease: silent past this, it counts as gone
    alive: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowSummary:
    """A workflow version the server knows, with its live workers and run counts by state."""

    name: str
    version: str
    live_workers: tuple[WorkerId, ...]
    runs: dict[str, int]  # state → count


@dataclass(frozen=True, slots=True, kw_only=True)
class PollRequest:
    """A worker asking for work: up to `capacity` runs, waiting up to `wait_ms` for some.

    With `capacity` 0 the poll only waits for cancel requests of runs the worker holds.
    While waiting, the server looks at storage again every `recheck_ms` in case a wake-up
    was missed.
    """

    worker_id: Annotated[WorkerId, Meta(min_length=1)]
    workflows: tuple[WorkflowKey, ...]
    capacity: Count
    lease_ms: Positive
    wait_ms: Count
    recheck_ms: Positive


@dataclass(frozen=True, slots=True, kw_only=True)
class PollReply:
    claimed: tuple[ClaimedRun, ...] = ()
    cancel_requested: tuple[RunId, ...] = ()
    # The server's size limit of a result: a worker keeps a task's result to write later
    # only if the server will take it, so that no refusal comes after the workflow used it.
    max_payload_bytes: Positive = DEFAULT_MAX_PAYLOAD_BYTES
