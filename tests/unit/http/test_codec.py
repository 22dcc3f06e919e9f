"""HTTP bodies: every record survives encode → JSON → strict decode; errors map both ways."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

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
from aiki._core.states import RunState
from aiki._http.bodies import (
    FinishBody,
    FinishTaskBody,
    HistoryBody,
    ListRunsQuery,
    ReleaseBody,
    RunPage,
    WorkersBody,
    WorkflowsBody,
)
from aiki._http.codec import Codec, encode
from aiki._http.errors import ERROR_CODES, ROUTING_CODES, ErrorBody, error_reply, exception_of
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


def through_json(value: Any) -> Any:
    """What the other side holds after the record crossed the wire."""
    return Codec(type(value)).decode(encode(value))


CASES: list[Any] = [
    FULL_STATUS,
    BARE_STATUS,
    Enqueued(id=RunId("r2"), created=True),
    NewRun(workflow="w", version="1", payload_json='{"a":1}', idempotency_key="k"),
    HistoryBody(
        events=(
            HistoryEvent(
                seq=1, at_ms=5, kind=EventKind.TASK_FAILED, state=RunState.RUNNING, data={"x": 1}
            ),
            HistoryEvent(seq=2, at_ms=6, kind=EventKind.COMPLETED, state=RunState.COMPLETED),
        )
    ),
    PollRequest(
        worker_id=WorkerId("w1"),
        workflows=(KEY, WorkflowKey(name="v", version="2")),
        capacity=0,
        lease_ms=30_000,
        wait_ms=20_000,
        recheck_ms=100,
    ),
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
    HeartbeatReply(lost=(RunId("a"),), cancel_requested=(RunId("b"), RunId("c"))),
    Lease(run_id=RunId("r"), revision=4),
    TaskStart(address=ADDRESS, attempt=1, worker_id=WorkerId("w")),
    TaskEnd(
        address=ADDRESS,
        attempt=2,
        worker_id=WorkerId("w"),
        outcome=TaskOutcome.RETRYING,
        duration_ms=12,
        error=ERROR,
        retry_delay_ms=500,
    ),
    TaskEnd(
        address=ADDRESS,
        attempt=1,
        worker_id=WorkerId("w"),
        outcome=TaskOutcome.COMPLETED,
        duration_ms=0,
        result_json="[1.0,2]",
    ),
    WaitInfo(kind=WaitKind.RETRY, until_ms=10),
    *(
        outcome
        for outcome in (
            RunOutcome(state=RunState.COMPLETED, result_json='{"z":[]}'),
            RunOutcome(state=RunState.FAILED, error=ERROR),
            RunOutcome(state=RunState.CANCELLED, reason="stop"),
        )
    ),
    WorkersBody(
        workers=(
            WorkerInfo(
                id=WorkerId("w1"),
                workflows=(KEY,),
                last_seen_ms=1,
                alive_until_ms=2,
                alive=False,
            ),
        )
    ),
    WorkflowsBody(
        workflows=(
            WorkflowSummary(
                name="w",
                version="1",
                live_workers=(WorkerId("a"),),
                runs={"pending": 2, "completed": 5},
            ),
        )
    ),
]


@pytest.mark.parametrize("value", CASES, ids=lambda x: type(x).__name__)
def test_round_trip(value: Any) -> None:
    assert through_json(value) == value


def test_leased_writes_round_trip() -> None:
    end = TaskEnd(
        address=ADDRESS,
        attempt=1,
        worker_id=WorkerId("w"),
        outcome=TaskOutcome.COMPLETED,
        duration_ms=3,
        result_json='{"b":1}',
    )
    for body in (
        FinishTaskBody(revision=2, end=end),
        FinishBody(revision=2, outcome=RunOutcome(state=RunState.FAILED, error=ERROR)),
    ):
        assert through_json(body) == body


def test_json_text_travels_as_a_string() -> None:
    """Payloads and results cross as the text they are: never parsed, never re-encoded."""
    sent = msgspec.json.decode(encode(FULL_STATUS))
    assert sent["payload_json"] == FULL_STATUS.payload_json
    record = TaskRecord(
        address=ADDRESS, outcome=TaskOutcome.COMPLETED, attempts=1, result_json='{"b":1,"a":2}'
    )
    assert msgspec.json.decode(encode(record))["result_json"] == '{"b":1,"a":2}'
    assert "payload" not in sent and "result" not in sent  # properties are not fields


def test_run_page_points_at_the_next_page_only_when_full() -> None:
    assert RunPage.of([BARE_STATUS], limit=1).next_after == "r2"
    assert RunPage.of([BARE_STATUS], limit=2).next_after is None
    assert RunPage.of([], limit=1).next_after is None


def test_a_run_outcome_must_be_final() -> None:
    with pytest.raises(ValueError, match="`state` must be"):
        RunOutcome(state=RunState.RUNNING)
    with pytest.raises(msgspec.ValidationError, match=r"not pending - at `\$.outcome`"):
        Codec(FinishBody).decode(b'{"revision": 1, "outcome": {"state": "pending"}}')


def test_request_decoding_is_strict() -> None:
    codec = Codec(ReleaseBody)
    for bad in (b'{"revision": "1"}', b'{"revision": true}', b'{"revision": 1.0}', b"{}"):
        with pytest.raises(msgspec.ValidationError):
            codec.decode(bad)
    with pytest.raises(msgspec.ValidationError, match=">= 0"):
        codec.decode(b'{"revision": -1}')
    assert codec.decode(b'{"revision": 1, "unknown": 2}') == ReleaseBody(revision=1)


def test_bounds_in_the_records_are_checked_on_the_way_in() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"length >= 1 - at `\$.workflow`"):
        Codec(NewRun).decode(b'{"workflow": "", "version": "1", "payload_json": "1"}')


def test_query_decoding_reads_strings() -> None:
    query = Codec(ListRunsQuery).from_query({"limit": "10", "state": "failed"})
    assert query == ListRunsQuery(limit=10, state=RunState.FAILED)
    assert Codec(ListRunsQuery).from_query({}) == ListRunsQuery()


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


def _error_body(body: dict[str, Any]) -> ErrorBody:
    return Codec(ErrorBody).decode(encode(body))


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_round_trip(error: AikiError) -> None:
    reply = error_reply(error)
    assert reply is not None
    status, body = reply
    assert status == (
        400
        if body["code"] == "invalid_request" and not body.get("field")
        else ERROR_CODES[body["code"]]
    )

    back = exception_of(_error_body(body))

    assert type(back) is type(error)
    assert str(back) == str(error)
    assert vars(back) == vars(error)


def test_every_code_has_a_class() -> None:
    codes = {reply[1]["code"] for reply in map(error_reply, ERRORS) if reply is not None}
    assert codes == set(ERROR_CODES) - set(ROUTING_CODES)


def test_other_exceptions_have_no_code() -> None:
    assert error_reply(KeyError("x")) is None
    assert error_reply(AikiError("base")) is None


def test_unknown_code_or_missing_attributes_give_a_client_error() -> None:
    unknown = exception_of(ErrorBody(code="teapot", message="short and stout"))
    assert type(unknown) is ClientError and "teapot: short and stout" in str(unknown)
    incomplete = exception_of(ErrorBody(code="lease_lost", message="m", run_id="r"))
    assert type(incomplete) is ClientError
