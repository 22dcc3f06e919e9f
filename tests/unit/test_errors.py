"""The error tree, and ErrorInfo: how any exception is described without ever raising."""

import pytest

import aiki
from aiki.errors import ErrorInfo

# Written out here from the tree in errors.py's docstring: class -> its direct Aiki parent.
TREE: dict[type[Exception], type[Exception]] = {
    aiki.ConfigError: aiki.AikiError,
    aiki.ClientError: aiki.AikiError,
    aiki.ServerUnavailableError: aiki.ClientError,
    aiki.RunNotFoundError: aiki.ClientError,
    aiki.IdempotencyConflictError: aiki.ClientError,
    aiki.EventRejectedError: aiki.ClientError,
    aiki.PayloadError: aiki.AikiError,
    aiki.PayloadTooLargeError: aiki.PayloadError,
    aiki.WorkflowRunError: aiki.AikiError,
    aiki.WorkflowRunFailedError: aiki.WorkflowRunError,
    aiki.WorkflowRunCancelledError: aiki.WorkflowRunError,
    aiki.TaskError: aiki.AikiError,
    aiki.NonRetryableError: aiki.TaskError,
    aiki.RetryLaterError: aiki.TaskError,
    aiki.TaskFailedError: aiki.AikiError,
    aiki.NondeterminismError: aiki.AikiError,
    aiki.LeaseLostError: aiki.AikiError,
    aiki.IllegalTransitionError: aiki.AikiError,
    aiki.StorageError: aiki.AikiError,
}


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class NonStrStr(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]  # the misbehaviour under test


def raise_and_catch(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(("error", "parent"), TREE.items(), ids=lambda c: c.__name__)
def test_error_sits_where_the_tree_says(error: type[Exception], parent: type[Exception]) -> None:
    assert issubclass(error, parent)
    assert issubclass(error, aiki.AikiError)


def test_aiki_error_is_an_exception() -> None:
    assert issubclass(aiki.AikiError, Exception)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (aiki.ConfigError, ValueError),
        (aiki.RunNotFoundError, LookupError),
        (aiki.PayloadError, TypeError),
        (aiki.PayloadTooLargeError, ValueError),
    ],
)
def test_some_errors_are_also_builtin_errors(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, builtin)


def test_from_exception_describes_a_builtin_error() -> None:
    info = ErrorInfo.from_exception(raise_and_catch(ValueError("bad amount")))
    assert info.type == "ValueError"
    assert info.message == "bad amount"
    assert info.traceback is not None
    assert "ValueError: bad amount" in info.traceback
    assert "raise_and_catch" in info.traceback


def test_from_exception_qualifies_a_user_error_with_its_module() -> None:
    info = ErrorInfo.from_exception(BrokenStr())
    assert info.type == f"{__name__}.BrokenStr"


def test_from_exception_of_an_exception_whose_str_raises_never_raises() -> None:
    info = ErrorInfo.from_exception(raise_and_catch(BrokenStr("x")))
    assert info.message == "<unprintable BrokenStr>"
    assert info.type.endswith("BrokenStr")


def test_from_exception_of_an_exception_whose_str_returns_a_non_str() -> None:
    info = ErrorInfo.from_exception(NonStrStr())
    assert info.message == "<unprintable NonStrStr>"


def test_from_exception_of_an_exception_never_raised_has_a_short_traceback() -> None:
    info = ErrorInfo.from_exception(KeyError("k"))
    assert info.traceback == "KeyError: 'k'\n"


def test_error_info_round_trips_through_json() -> None:
    info = ErrorInfo.from_exception(raise_and_catch(ValueError("bad")))
    assert ErrorInfo.from_json(info.to_json()) == info


def test_error_info_from_json_without_traceback() -> None:
    info = ErrorInfo.from_json({"type": "ValueError", "message": "bad"})
    assert info == ErrorInfo(type="ValueError", message="bad")


def test_workflow_run_failed_error_names_the_run_and_the_cause() -> None:
    error = aiki.WorkflowRunFailedError(
        run_id="r1", error=ErrorInfo(type="ValueError", message="bad")
    )
    assert str(error) == "workflow run r1 failed: ValueError: bad"
    assert error.run_id == "r1"
    assert error.error.message == "bad"


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (None, "workflow run r1 was cancelled"),
        ("user asked", "workflow run r1 was cancelled: user asked"),
    ],
)
def test_workflow_run_cancelled_error_gives_the_reason(reason: str | None, message: str) -> None:
    error = aiki.WorkflowRunCancelledError(run_id="r1", reason=reason)
    assert str(error) == message
    assert error.reason == reason


def test_task_failed_error_names_the_task_and_attempts() -> None:
    error = aiki.TaskFailedError(
        task_name="charge", attempts=3, error=ErrorInfo(type="KeyError", message="'x'")
    )
    assert str(error) == "task 'charge' failed after 3 attempt(s): KeyError: 'x'"
    assert (error.task_name, error.attempts) == ("charge", 3)


def test_retry_later_error_carries_its_delay() -> None:
    error = aiki.RetryLaterError(delay_ms=1_500)
    assert error.delay_ms == 1_500
    assert str(error) == "retry later"


def test_retry_later_error_refuses_a_negative_delay() -> None:
    with pytest.raises(ValueError, match="delay_ms"):
        aiki.RetryLaterError(delay_ms=-1)


def test_structured_attributes_of_client_and_state_errors() -> None:
    assert aiki.RunNotFoundError("r1").run_id == "r1"
    lost = aiki.LeaseLostError("r1", 4)
    assert (lost.run_id, lost.revision) == ("r1", 4)
    conflict = aiki.IdempotencyConflictError(
        workflow="checkout", version="1", idempotency_key="k", run_id="r1"
    )
    assert (conflict.workflow, conflict.version, conflict.idempotency_key) == ("checkout", "1", "k")
    assert "'k'" in str(conflict)
    assert "r1" in str(conflict)


def test_payload_too_large_error_carries_size_and_limit() -> None:
    error = aiki.PayloadTooLargeError("too big", size=11, limit=10)
    assert (error.size, error.limit, str(error)) == (11, 10, "too big")
