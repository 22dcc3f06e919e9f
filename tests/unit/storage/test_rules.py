"""The storage rules both SQL dialects call, as plain functions of the values they read."""

from __future__ import annotations

import json

import pytest

from aiki._core.ids import RunId, WorkerId
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
    TaskOutcome,
    WaitKind,
    WorkflowKey,
)
from aiki._core.states import RunAction, RunState
from aiki.errors import (
    EventRejectedError,
    IdempotencyConflictError,
    IllegalTransitionError,
    LeaseLostError,
)
from aiki.storage._rules import (
    LEASE_EXPIRED_ERROR_TYPE,
    CancelStep,
    ExpiredLease,
    TimerPass,
    cancel_step,
    check_event_accepted,
    check_lease,
    check_refused,
    check_running,
    enqueued_before,
    event_sent_before,
    event_stored,
    expire_lease,
    interrupted_tasks,
    next_due,
    same_end,
    same_start,
    wakes_on_event,
)

RUN = RunId("r1")
LEASE = Lease(run_id=RUN, revision=3)
ADDRESS = TaskAddress(task="charge", digest="d" * 64, index=1)


def test_a_current_lease_moves_the_run_where_the_state_machine_says() -> None:
    assert check_lease(LEASE, RunAction.SUSPEND, "running", 3) is RunState.WAITING
    with pytest.raises(IllegalTransitionError):
        check_lease(LEASE, RunAction.SUSPEND, "waiting", 3)


def test_a_write_found_applied_one_revision_on_is_sent_again() -> None:
    assert check_lease(LEASE, RunAction.SUSPEND, "waiting", 4) is None
    assert check_lease(LEASE, RunAction.COMPLETE, "completed", 4) is None


@pytest.mark.parametrize(
    ("state", "revision"),
    [(None, None), ("running", 4), ("pending", 4), ("waiting", 5), ("running", 2)],
)
def test_a_stale_lease_is_lost(state: str | None, revision: int | None) -> None:
    with pytest.raises(LeaseLostError):
        check_lease(LEASE, RunAction.SUSPEND, state, revision)


def test_a_refused_write_is_lost_unless_it_was_sent_again() -> None:
    check_refused(LEASE, RunAction.RELEASE, "pending", 4)  # sent again: nothing to raise
    with pytest.raises(LeaseLostError):
        check_refused(LEASE, RunAction.RELEASE, "running", 3)  # the row moved on when locked
    with pytest.raises(IllegalTransitionError):
        check_refused(LEASE, RunAction.RELEASE, "waiting", 3)


def test_task_writes_need_the_run_running_under_this_revision() -> None:
    check_running(LEASE, "running", 3)
    for state, revision in [("running", 4), ("pending", 3), (None, None)]:
        with pytest.raises(LeaseLostError):
            check_running(LEASE, state, revision)


def test_same_start_and_same_end() -> None:
    data = json.dumps({"task": "charge", "digest": "d" * 64, "index": 1, "attempt": 2})
    assert same_start("task_started", data, ADDRESS, 2)
    assert not same_start("task_started", data, ADDRESS, 3)
    assert not same_start("task_completed", data, ADDRESS, 2)
    end = TaskEnd(
        address=ADDRESS,
        attempt=2,
        worker_id=WorkerId("w"),
        outcome=TaskOutcome.COMPLETED,
        duration_ms=1,
    )
    assert same_end("completed", 2, end)
    assert not same_end("retrying", 2, end)
    assert not same_end("completed", 1, end)


def test_an_idempotency_key_returns_its_run_only_for_the_same_payload() -> None:
    new = NewRun(workflow="w", version="1", payload_json='{"a":1}', idempotency_key="k")
    assert enqueued_before(new, "r0", '{"a":1}') == Enqueued(id=RunId("r0"), created=False)
    with pytest.raises(IdempotencyConflictError):
        enqueued_before(new, "r0", '{"a":2}')


def test_an_event_key_returns_its_event_only_for_the_same_data() -> None:
    new = NewEvent(run_id=RUN, name="approved", data_json="true", idempotency_key="k")
    assert event_sent_before(new, 7, "true") == EventSent(seq=7, created=False)
    with pytest.raises(EventRejectedError):
        event_sent_before(new, 7, "false")


def test_events_are_refused_by_final_runs_and_wake_runs_waiting_for_events() -> None:
    new = NewEvent(run_id=RUN, name="approved", data_json="true")
    assert check_event_accepted(new, "waiting") is RunState.WAITING
    with pytest.raises(EventRejectedError):
        check_event_accepted(new, "completed")
    assert wakes_on_event(RunState.WAITING, WaitKind.EVENT.value)
    assert not wakes_on_event(RunState.WAITING, WaitKind.SLEEP.value)
    assert not wakes_on_event(RunState.RUNNING, None)
    assert event_stored(3, True, "w", "1").workflow == WorkflowKey(name="w", version="1")
    assert event_stored(3, False, "w", "1").workflow is None


def _run(state: RunState, *, cancel_requested: bool = False) -> RunStatus:
    return RunStatus(
        id=RUN,
        workflow="w",
        version="1",
        state=state,
        payload_json="{}",
        cancel_requested=cancel_requested,
        created_at_ms=0,
        updated_at_ms=0,
    )


def test_cancel_flags_a_running_run_once_and_ends_the_others_now() -> None:
    assert cancel_step(_run(RunState.RUNNING)) is CancelStep.FLAG
    assert cancel_step(_run(RunState.RUNNING, cancel_requested=True)) is None
    assert cancel_step(_run(RunState.PENDING)) is CancelStep.END
    assert cancel_step(_run(RunState.WAITING)) is CancelStep.END
    assert cancel_step(_run(RunState.COMPLETED)) is None


def _expired(recovery_attempts: int, *, cancel_requested: bool = False) -> ExpiredLease:
    start = {"task": "charge", "digest": "d", "index": 0, "attempt": 1, "worker_id": "w"}
    return ExpiredLease(
        run_id="r1",
        worker_id="w",
        recovery_attempts=recovery_attempts,
        cancel_requested=cancel_requested,
        cancel_reason="stop" if cancel_requested else None,
        task_events=[("task_started", json.dumps(start))],
    )


def test_an_expired_lease_sends_the_run_back_until_the_recovery_limit() -> None:
    back = expire_lease(_expired(1), max_recovery_attempts=2)
    assert (back.state, back.event, back.recovered) == (
        RunState.PENDING,
        EventKind.LEASE_EXPIRED,
        1,
    )
    assert back.data["recovery_attempts"] == 2
    assert back.data["interrupted"] == [{"task": "charge", "index": 0, "digest": "d", "attempt": 1}]
    failed = expire_lease(_expired(2), max_recovery_attempts=2)
    assert (failed.state, failed.event, failed.recovered) == (RunState.FAILED, EventKind.FAILED, 0)
    assert failed.error is not None and failed.error.type == LEASE_EXPIRED_ERROR_TYPE
    assert failed.data["lease_expired"] is True
    cancelled = expire_lease(_expired(5, cancel_requested=True), max_recovery_attempts=2)
    assert (cancelled.state, cancelled.event) == (RunState.CANCELLED, EventKind.CANCELLED)
    assert cancelled.data["reason"] == "stop"


def test_interrupted_tasks_are_the_starts_never_ended() -> None:
    def event(kind: str, attempt: int) -> tuple[str, str]:
        return kind, json.dumps({"task": "t", "digest": "d", "index": 0, "attempt": attempt})

    events = [event("task_started", 1), event("task_failed", 1), event("task_started", 2)]
    assert interrupted_tasks(events) == [{"task": "t", "index": 0, "digest": "d", "attempt": 2}]


def test_a_timer_pass_reports_what_it_changed_and_the_next_due_time() -> None:
    timers = TimerPass(now_ms=100, max_recovery_attempts=1, limit=3)
    timers.expire(_expired(0))
    timers.expire(_expired(1))
    assert timers.remaining == 1
    woken = timers.wake("r2", WaitKind.SLEEP.value, "nap")
    assert (woken.state, woken.event) == (RunState.PENDING, EventKind.WOKEN)
    report = timers.report(None, 250)
    assert report.expired == (RUN,) and report.ended == (RUN,) and report.woken == ("r2",)
    assert (report.next_due_ms, report.now_ms) == (250, 100)
    assert next_due(None, None) is None and next_due(5, 3) == 3
