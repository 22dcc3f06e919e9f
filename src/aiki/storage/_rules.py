"""The storage rules, decided once for both SQL dialects.

Whether a worker's write still holds its lease or is its own write sent again, what an enqueue
or an event with a known idempotency key answers, what a cancel does, what becomes of a run
whose lease expired and what a timer pass reports: each is a pure function of the values a
dialect read, and each dialect calls it. The dialects hold only their statements and drivers.
(PostgreSQL's batched statements also test "sent again" for task starts and ends in SQL, so
that many calls share one round trip; `same_start` and `same_end` are the same tests.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiki._core.ids import RunId
from aiki._core.models import (
    Enqueued,
    EventKind,
    EventSent,
    Lease,
    NewEvent,
    NewRun,
    RunStatus,
    TaskAddress,
    TaskEnd,
    TimerReport,
    WaitKind,
    WorkflowKey,
)
from aiki._core.states import TARGET, RunAction, RunState, check_transition
from aiki.errors import (
    ErrorInfo,
    EventRejectedError,
    IdempotencyConflictError,
    LeaseLostError,
    RecoveryLimitError,
)

LEASE_EXPIRED_ERROR_TYPE = f"{RecoveryLimitError.__module__}.{RecoveryLimitError.__qualname__}"

# --- leases -------------------------------------------------------------------------------------


def sent_again(lease: Lease, target: RunState, state: str | None, revision: int | None) -> bool:
    """Whether `lease`'s holder already moved the run to `target`: its write, sent again.

    A worker sends a write again when the reply to the first was lost (the server died, the
    connection dropped). A write that ends a lease bumps the revision once; finding the run in
    the state it asked for, one revision on, means the first one was applied. `state` and
    `revision` are the run as last read.
    """
    return state == target.value and revision == lease.revision + 1


def check_lease(
    lease: Lease, action: RunAction, state: str | None, revision: int | None
) -> RunState | None:
    """Whether a write under `lease` that ends it (`action`) may change the run as read.

    Returns:
        The state the run moves to, or None when the run is where this write leads, one
        revision on: the same write, sent again, to be answered as if it had just been done.

    Raises:
        LeaseLostError: the run is gone or another revision holds it.
        IllegalTransitionError: the state machine forbids `action` from the run's state.
    """
    if state is None or revision != lease.revision:
        if sent_again(lease, TARGET[action], state, revision):
            return None
        raise LeaseLostError(lease.run_id, lease.revision)
    return check_transition(lease.run_id, RunState(state), action)


def check_refused(lease: Lease, action: RunAction, state: str | None, revision: int | None) -> None:
    """After a statement refused a write under `lease`: return if it was the write sent again.

    `state` and `revision` are the run as the refused statement's snapshot saw it; a refusal
    raises what `check_lease` raises for them.
    """
    if check_lease(lease, action, state, revision) is not None:
        # The snapshot allowed the change, but the row had moved on by the time it was locked:
        # a concurrent write bumped the revision.
        raise LeaseLostError(lease.run_id, lease.revision)


def check_running(lease: Lease, state: str | None, revision: int | None) -> None:
    """Check that `lease` holds the run, for a write that keeps it running (a task's).

    A current revision on a run that is not running (an unclaimed pending run still has its
    revision 0) is no lease either.
    """
    if revision != lease.revision or state != RunState.RUNNING.value:
        raise LeaseLostError(lease.run_id, lease.revision)


def same_start(kind: str, data: str | None, address: TaskAddress, attempt: int) -> bool:
    """Whether the run's last history event (`kind`, `data`) is this attempt's start."""
    if kind != EventKind.TASK_STARTED.value or data is None:
        return False
    start = json.loads(data)
    return bool(
        start["task"] == address.task
        and start["digest"] == address.digest
        and start["index"] == address.index
        and start["attempt"] == attempt
    )


def same_end(outcome: str, attempts: int, end: TaskEnd) -> bool:
    """Whether the task's recorded result (`outcome`, `attempts`) is this attempt's end."""
    return outcome == end.outcome.value and attempts == end.attempt


# --- idempotency --------------------------------------------------------------------------------


def enqueued_before(new: NewRun, run_id: str, payload_json: str) -> Enqueued:
    """The answer to an enqueue whose idempotency key the run `run_id` already holds.

    Raises:
        IdempotencyConflictError: that run was enqueued with another payload.
    """
    # Payloads are canonical JSON text, stored as given: equal payloads are equal strings.
    if payload_json != new.payload_json:
        assert new.idempotency_key is not None  # only a key finds an earlier run
        raise IdempotencyConflictError(
            workflow=new.workflow,
            version=new.version,
            idempotency_key=new.idempotency_key,
            run_id=RunId(run_id),
        )
    return Enqueued(id=RunId(run_id), created=False)


def check_claimable(new: NewRun) -> None:
    """A run may be created claimed only without an idempotency key: one with it may exist.

    Raises:
        ValueError: `new` has an idempotency key.
    """
    if new.idempotency_key is not None:
        raise ValueError(
            f"a run of {new.workflow!r} with idempotency key {new.idempotency_key!r} cannot be "
            "created claimed: enqueue it, then claim it"
        )


def event_sent_before(new: NewEvent, seq: int, data_json: str) -> EventSent:
    """The answer to an event whose idempotency key the run's event `seq` already used.

    Raises:
        EventRejectedError: that event was sent with other data.
    """
    if data_json != new.data_json:
        assert new.idempotency_key is not None  # only a key finds an earlier event
        raise EventRejectedError.conflict(
            run_id=new.run_id, name=new.name, idempotency_key=new.idempotency_key
        )
    return EventSent(seq=seq, created=False)


# --- events -------------------------------------------------------------------------------------


def check_event_accepted(new: NewEvent, state: str) -> RunState:
    """The state of the run `new` is sent to, if it takes events.

    Raises:
        EventRejectedError: the run is final.
    """
    run_state = RunState(state)
    if run_state.is_final:
        raise EventRejectedError.run_final(run_id=new.run_id, name=new.name, state=state)
    return run_state


def wakes_on_event(state: RunState, wait_kind: str | None) -> bool:
    """Whether an event wakes a run in `state` that waits for `wait_kind`.

    Any event wakes a run waiting for events: it may wait for several names at once
    (asyncio.gather), and a wake-up for a name it does not wait for only replays it.
    """
    return state is RunState.WAITING and wait_kind == WaitKind.EVENT.value


def event_stored(seq: int, woken: bool, workflow: str, version: str) -> EventSent:
    """The answer to an event just stored; a woken run's workflow is named for the server."""
    return EventSent(
        seq=seq,
        created=True,
        woken=woken,
        workflow=WorkflowKey(name=workflow, version=version) if woken else None,
    )


# --- cancels ------------------------------------------------------------------------------------


class CancelStep(StrEnum):
    """What a cancel does to a run that is not final yet."""

    FLAG = "flag"  # running: its worker sees the flag at its next heartbeat or task end
    END = "end"  # pending or waiting: cancelled now


def cancel_step(run: RunStatus) -> CancelStep | None:
    """What a cancel does to `run` as read; None when it leaves the run as it is.

    Raises:
        IllegalTransitionError: the state machine forbids cancelling the run.
    """
    if run.state.is_final:
        return None
    if run.state is RunState.RUNNING:
        return None if run.cancel_requested else CancelStep.FLAG
    check_transition(run.id, run.state, RunAction.CANCEL)
    return CancelStep.END


# --- timers -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpiredLease:
    """A running run whose lease passed, as a timer pass read it."""

    run_id: str
    worker_id: str | None
    recovery_attempts: int
    cancel_requested: bool
    cancel_reason: str | None
    # The (kind, data) of the task events since the run's last claim, oldest first.
    task_events: Iterable[tuple[str, str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunChange:
    """A change a timer pass decided for one run, and the history event that records it."""

    run_id: str
    state: RunState
    event: EventKind
    data: dict[str, Any]
    error: ErrorInfo | None = None  # a failed run's
    recovered: int = 0  # 1 when a lost lease sends the run back to pending


def wake(run_id: str, wait_kind: str | None, wait_detail: str | None) -> RunChange:
    """A waiting run's wait is over (its time came, or an event did): back to pending."""
    target = check_transition(run_id, RunState.WAITING, RunAction.WAKE)
    return RunChange(
        run_id=run_id,
        state=target,
        event=EventKind.WOKEN,
        data={"kind": wait_kind, "detail": wait_detail},
    )


def expire_lease(lease: ExpiredLease, *, max_recovery_attempts: int) -> RunChange:
    """What becomes of a run whose worker went silent.

    It is cancelled if a cancel was requested, fails once it lost its worker more than
    `max_recovery_attempts` times, and goes back to pending otherwise.
    """
    run_id = lease.run_id
    losses = lease.recovery_attempts + 1
    data: dict[str, Any] = {
        "worker_id": lease.worker_id,
        "interrupted": interrupted_tasks(lease.task_events),
    }
    if lease.cancel_requested:
        target = check_transition(run_id, RunState.RUNNING, RunAction.CANCEL)
        data |= {"reason": lease.cancel_reason, "lease_expired": True}
        return RunChange(run_id=run_id, state=target, event=EventKind.CANCELLED, data=data)
    if losses > max_recovery_attempts:
        target = check_transition(run_id, RunState.RUNNING, RunAction.FAIL)
        error = lease_expired_error(run_id, losses, lease.worker_id, max_recovery_attempts)
        data |= {"error": error.to_json(), "lease_expired": True}
        return RunChange(
            run_id=run_id, state=target, event=EventKind.FAILED, data=data, error=error
        )
    target = check_transition(run_id, RunState.RUNNING, RunAction.EXPIRE_LEASE)
    data["recovery_attempts"] = losses
    return RunChange(
        run_id=run_id, state=target, event=EventKind.LEASE_EXPIRED, data=data, recovered=1
    )


def lease_expired_error(
    run_id: str, losses: int, worker_id: str | None, max_recovery_attempts: int
) -> ErrorInfo:
    """Why a run failed when its worker went silent once too often."""
    return ErrorInfo(
        type=LEASE_EXPIRED_ERROR_TYPE,
        message=(
            f"workflow run {run_id} lost its worker {losses} time(s), the last time worker "
            f"{worker_id!r}; max_recovery_attempts is {max_recovery_attempts}"
        ),
    )


def interrupted_tasks(events: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """The task attempts the lost worker started and never reported, oldest first.

    `events` are the (kind, data) of the attempt's task events, oldest first.
    """
    started: dict[tuple[Any, ...], dict[str, Any]] = {}
    for kind, text in events:
        data = json.loads(text)
        key = (data["task"], data["digest"], data["index"], data["attempt"])
        if kind == EventKind.TASK_STARTED.value:
            started[key] = {name: data[name] for name in ("task", "index", "digest", "attempt")}
        else:
            started.pop(key, None)
    return list(started.values())


def next_due(*dues: int | None) -> int | None:
    """The earliest of the due times found (a wait's end, a lease's), if any."""
    found = [due for due in dues if due is not None]
    return min(found) if found else None


@dataclass(slots=True)
class TimerPass:
    """One pass of the timers: expired leases first, then due waits, `limit` runs at most.

    A dialect reads the due runs, asks `expire` or `wake` for each one's change, applies the
    changes, and reports with the next due times it finds afterwards.
    """

    now_ms: int
    max_recovery_attempts: int
    limit: int
    changes: list[RunChange] = field(default_factory=list)
    _woken: list[RunId] = field(default_factory=list)
    _expired: list[RunId] = field(default_factory=list)
    _ended: list[RunId] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        """How many more runs this pass may change."""
        return self.limit - len(self.changes)

    def expire(self, lease: ExpiredLease) -> RunChange:
        change = expire_lease(lease, max_recovery_attempts=self.max_recovery_attempts)
        (self._ended if change.state.is_final else self._expired).append(RunId(lease.run_id))
        self.changes.append(change)
        return change

    def wake(self, run_id: str, wait_kind: str | None, wait_detail: str | None) -> RunChange:
        change = wake(run_id, wait_kind, wait_detail)
        self._woken.append(RunId(run_id))
        self.changes.append(change)
        return change

    def report(self, *dues: int | None) -> TimerReport:
        """What the pass did; `dues` are the earliest due times left after it."""
        return TimerReport(
            woken=tuple(self._woken),
            expired=tuple(self._expired),
            ended=tuple(self._ended),
            next_due_ms=next_due(*dues),
            now_ms=self.now_ms,
        )
