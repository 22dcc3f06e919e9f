"""Wire bodies: every record survives dump → JSON → validate → load; errors map both ways."""

from __future__ import annotations

import json
from typing import Any, get_args

import pydantic
import pytest

from aiki._core import wire
from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    ClaimedRun,
    Enqueued,
    EventKind,
    HeartbeatReply,
    HistoryEvent,
    Lease,
    NewRun,
    PollReply,
    PollRequest,
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
from aiki._core.states import FINAL_STATES, RunState
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

KEY = WorkflowKey(name="w", version="1.0.0")
ERROR = ErrorInfo(type="ValueError", message="bad ☃", traceback="Traceback...")
ADDRESS = TaskAddress(task="charge", digest="ab" * 32, index=2)
FULL_STATUS = RunStatus(
    id=RunId("r1"),
    workflow="w",
    version="1.0.0",
    state=RunState.WAITING,
    payload_json='{"a":[1,2.5,null,true,"ü"],"nested":{"x":{}}}',
    result_json=None,
    error=ERROR,
    idempotency_key="k",
    attempt=3,
    recovery_attempts=1,
    revision=7,
    wait=WaitInfo(kind=WaitKind.RETRY, until_ms=1_700_000_000_123, detail="charge"),
    worker_id=WorkerId("worker-1"),
    lease_expires_at_ms=1_700_000_000_999,
    cancel_requested=True,
    cancel_reason="user",
    created_at_ms=1_700_000_000_000,
    updated_at_ms=1_700_000_000_500,
    note="no live worker serves w@1.0.0",
)
BARE_STATUS = RunStatus(
    id=RunId("r2"),
    workflow="w",
    version="1",
    state=RunState.COMPLETED,
    payload_json="null",
    result_json='[1,"two"]',
    created_at_ms=1,
    updated_at_ms=2,
)


def through_json(schema: wire.Schema[Any], body: Any) -> Any:
    """What the other side holds after the body crossed the wire."""
    return schema.from_json(json.dumps(body).encode())


CASES: list[tuple[Any, Any, Any, Any]] = [
    (wire.RunStatusBody, wire.dump_run_status, wire.load_run_status, FULL_STATUS),
    (wire.RunStatusBody, wire.dump_run_status, wire.load_run_status, BARE_STATUS),
    (
        wire.EnqueuedBody,
        wire.dump_enqueued,
        wire.load_enqueued,
        Enqueued(id=RunId("r2"), created=True),
    ),
    (
        wire.NewRunBody,
        wire.dump_new_run,
        wire.load_new_run,
        NewRun(workflow="w", version="1", payload_json='{"a":1}', idempotency_key="k"),
    ),
    (
        wire.HistoryBody,
        wire.dump_history,
        wire.load_history,
        [
            HistoryEvent(
                seq=1, at_ms=5, kind=EventKind.TASK_FAILED, state=RunState.RUNNING, data={"x": 1}
            ),
            HistoryEvent(seq=2, at_ms=6, kind=EventKind.COMPLETED, state=RunState.COMPLETED),
        ],
    ),
    (
        wire.PollRequestBody,
        wire.dump_poll_request,
        wire.load_poll_request,
        PollRequest(
            worker_id=WorkerId("w1"),
            workflows=(KEY, WorkflowKey(name="v", version="2")),
            capacity=0,
            lease_ms=30_000,
            wait_ms=20_000,
            recheck_ms=100,
        ),
    ),
    (
        wire.PollReplyBody,
        wire.dump_poll_reply,
        wire.load_poll_reply,
        PollReply(
            claimed=(
                ClaimedRun(
                    run=FULL_STATUS,
                    revision=8,
                    now_ms=9,
                    tasks=(
                        TaskRecord(
                            address=ADDRESS,
                            outcome=TaskOutcome.COMPLETED,
                            attempts=1,
                            result_json='{"b":1,"a":2}',  # text, not re-encoded
                        ),
                        TaskRecord(
                            address=ADDRESS, outcome=TaskOutcome.FAILED, attempts=3, error=ERROR
                        ),
                    ),
                ),
            ),
            cancel_requested=(RunId("r9"),),
        ),
    ),
    (
        wire.HeartbeatReplyBody,
        wire.dump_heartbeat_reply,
        wire.load_heartbeat_reply,
        HeartbeatReply(lost=(RunId("a"),), cancel_requested=(RunId("b"), RunId("c"))),
    ),
    (wire.LeaseBody, wire.dump_lease, wire.load_lease, Lease(run_id=RunId("r"), revision=4)),
    (
        wire.TaskStartBody,
        wire.dump_task_start,
        wire.load_task_start,
        TaskStart(address=ADDRESS, attempt=1, worker_id=WorkerId("w")),
    ),
    (
        wire.TaskEndBody,
        wire.dump_task_end,
        wire.load_task_end,
        TaskEnd(
            address=ADDRESS,
            attempt=2,
            worker_id=WorkerId("w"),
            outcome=TaskOutcome.RETRYING,
            duration_ms=12,
            error=ERROR,
            retry_delay_ms=500,
        ),
    ),
    (
        wire.TaskEndBody,
        wire.dump_task_end,
        wire.load_task_end,
        TaskEnd(
            address=ADDRESS,
            attempt=1,
            worker_id=WorkerId("w"),
            outcome=TaskOutcome.COMPLETED,
            duration_ms=0,
            result_json="[1.0,2]",
        ),
    ),
    (
        wire.WaitInfoBody,
        wire.dump_wait_info,
        wire.load_wait_info,
        WaitInfo(kind=WaitKind.RETRY, until_ms=10),
    ),
    *(
        (wire.RunOutcomeBody, wire.dump_run_outcome, wire.load_run_outcome, outcome)
        for outcome in (
            RunOutcome(state=RunState.COMPLETED, result_json='{"z":[]}'),
            RunOutcome(state=RunState.FAILED, error=ERROR),
            RunOutcome(state=RunState.CANCELLED, reason="stop"),
        )
    ),
    (
        wire.WorkersBody,
        wire.dump_workers,
        wire.load_workers,
        [
            WorkerInfo(
                id=WorkerId("w1"),
                workflows=(KEY,),
                last_seen_ms=1,
                alive_until_ms=2,
                alive=False,
            )
        ],
    ),
    (
        wire.WorkflowsBody,
        wire.dump_workflows,
        wire.load_workflows,
        [
            WorkflowSummary(
                name="w",
                version="1",
                live_workers=(WorkerId("a"),),
                runs={"pending": 2, "completed": 5},
            )
        ],
    ),
]


@pytest.mark.parametrize(
    ("body", "dump", "load", "value"), CASES, ids=lambda x: getattr(x, "__name__", None)
)
def test_round_trip(body: Any, dump: Any, load: Any, value: Any) -> None:
    assert load(through_json(wire.Schema(body), dump(value))) == value


def test_json_text_travels_as_a_string_and_values_as_values() -> None:
    body = wire.dump_run_status(FULL_STATUS)
    assert body["payload_json"] == FULL_STATUS.payload_json
    record = TaskRecord(
        address=ADDRESS, outcome=TaskOutcome.COMPLETED, attempts=1, result_json='{"b":1,"a":2}'
    )
    assert wire.dump_task_record(record)["result_json"] == '{"b":1,"a":2}'


def test_run_page_points_at_the_next_page_only_when_full() -> None:
    assert wire.dump_run_page([BARE_STATUS], limit=1)["next_after"] == "r2"
    assert wire.dump_run_page([BARE_STATUS], limit=2)["next_after"] is None
    assert wire.dump_run_page([], limit=1)["next_after"] is None


def test_final_state_literal_matches_the_state_machine() -> None:
    assert set(get_args(wire.FinalState)) == {s.value for s in FINAL_STATES}


def test_request_validation_is_strict() -> None:
    schema = wire.Schema(wire.ReleaseBody)
    for bad in (b'{"revision": "1"}', b'{"revision": true}', b'{"revision": 1.0}', b"{}"):
        with pytest.raises(pydantic.ValidationError):
            schema.from_json(bad)
    assert schema.from_json(b'{"revision": 1, "unknown": 2}') == {"revision": 1}


def test_query_validation_reads_strings() -> None:
    query = wire.Schema(wire.ListRunsQuery).from_query({"limit": "10", "state": "failed"})
    assert query == {"limit": 10, "state": RunState.FAILED}


ERRORS: list[AikiError] = [
    RunNotFoundError("r1"),
    WorkflowNotFoundError(workflow="w", version="9", known=["1", "2"]),
    IdempotencyConflictError(workflow="w", version="1", idempotency_key="k", run_id="r1"),
    EventRejectedError.run_final(run_id="r1", name="approved", state="completed"),
    EventRejectedError.conflict(run_id="r1", name="approved", idempotency_key="k"),
    LeaseLostError("r1", 3),
    IllegalTransitionError("r1", "completed", "suspend"),
    PayloadTooLargeError("too big", size=20, limit=10),
    PayloadError("not JSON"),
    InvalidRequestError("limit: too small", field="limit"),
    InvalidRequestError("not JSON"),
    UnauthorizedError("no key"),
    StorageError("disk full"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_round_trip(error: AikiError) -> None:
    dumped = wire.dump_error(error)
    assert dumped is not None
    status, body = dumped
    assert status == (
        400
        if body["code"] == "invalid_request" and not body.get("field")
        else wire.ERROR_CODES[body["code"]]
    )

    back = wire.load_error(through_json(wire.Schema(wire.ErrorBody), body))

    assert type(back) is type(error)
    assert str(back) == str(error)
    assert vars(back) == vars(error)


def test_every_code_has_a_class() -> None:
    codes = {d[1]["code"] for d in map(wire.dump_error, ERRORS) if d is not None}
    assert codes == set(wire.ERROR_CODES)


def test_other_exceptions_have_no_code() -> None:
    assert wire.dump_error(KeyError("x")) is None
    assert wire.dump_error(AikiError("base")) is None


def test_unknown_code_or_missing_attributes_give_a_client_error() -> None:
    unknown = wire.load_error({"code": "teapot", "message": "short and stout"})
    assert type(unknown) is ClientError and "teapot: short and stout" in str(unknown)
    incomplete = wire.load_error({"code": "lease_lost", "message": "m", "run_id": "r"})
    assert type(incomplete) is ClientError
