"""The public surface, pinned: a change to what Aiki exports shows up here in review."""

import importlib
from types import ModuleType

import pytest

import aiki
import aiki.errors
import aiki.testing

AIKI_ALL = [
    "AikiError",
    "Client",
    "ClientError",
    "ConfigError",
    "ErrorInfo",
    "EventRejectedError",
    "EventSent",
    "HistoryEvent",
    "IdempotencyConflictError",
    "IllegalTransitionError",
    "InvalidRequestError",
    "LeaseLostError",
    "NonRetryableError",
    "NondeterminismError",
    "Params",
    "PayloadError",
    "PayloadTooLargeError",
    "RecoveryLimitError",
    "Registry",
    "Retry",
    "RetryLaterError",
    "RunHandle",
    "RunNotFoundError",
    "RunState",
    "RunStatus",
    "Server",
    "ServerSettings",
    "ServerUnavailableError",
    "StorageError",
    "SubscriberConfig",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskFailedError",
    "UnauthorizedError",
    "WaitInfo",
    "Worker",
    "Workflow",
    "WorkflowNotFoundError",
    "WorkflowRun",
    "WorkflowRunCancelledError",
    "WorkflowRunConfig",
    "WorkflowRunError",
    "WorkflowRunFailedError",
    "create_client",
    "server",
    "task",
    "worker",
    "workflow",
]

TESTING_ALL = ["FakeClock", "kill_worker"]

ERRORS_ALL = [
    "AikiError",
    "ClientError",
    "ConfigError",
    "ErrorInfo",
    "EventRejectedError",
    "IdempotencyConflictError",
    "IllegalTransitionError",
    "InvalidRequestError",
    "LeaseLostError",
    "NonRetryableError",
    "NondeterminismError",
    "PayloadError",
    "PayloadTooLargeError",
    "RecoveryLimitError",
    "RetryLaterError",
    "RunNotFoundError",
    "ServerUnavailableError",
    "StorageError",
    "TaskError",
    "TaskFailedError",
    "UnauthorizedError",
    "WorkflowNotFoundError",
    "WorkflowRunCancelledError",
    "WorkflowRunError",
    "WorkflowRunFailedError",
]

MODULES = [
    pytest.param(aiki, AIKI_ALL, id="aiki"),
    pytest.param(aiki.testing, TESTING_ALL, id="aiki.testing"),
    pytest.param(aiki.errors, ERRORS_ALL, id="aiki.errors"),
]


@pytest.mark.parametrize(("module", "expected"), MODULES)
def test_all_is_pinned(module: ModuleType, expected: list[str]) -> None:
    assert module.__all__ == expected


@pytest.mark.parametrize(("module", "expected"), MODULES)
def test_all_is_sorted_without_duplicates(module: ModuleType, expected: list[str]) -> None:
    assert module.__all__ == sorted(set(module.__all__))


@pytest.mark.parametrize(("module", "expected"), MODULES)
def test_every_exported_name_is_importable(module: ModuleType, expected: list[str]) -> None:
    fresh = importlib.import_module(module.__name__)
    missing = [name for name in expected if not hasattr(fresh, name)]
    assert missing == []


@pytest.mark.parametrize(("module", "expected"), MODULES)
def test_star_import_gives_exactly_all(module: ModuleType, expected: list[str]) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module.__name__} import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(expected)


def test_top_level_errors_are_the_same_objects_as_in_aiki_errors() -> None:
    shared = [name for name in ERRORS_ALL if name in AIKI_ALL]
    assert shared == ERRORS_ALL
    for name in shared:
        assert getattr(aiki, name) is getattr(aiki.errors, name), name
