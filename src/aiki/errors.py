"""Every error Aiki raises, in one tree.

```
AikiError
  ConfigError
  ClientError
    ServerUnavailableError
    RunNotFoundError
    WorkflowNotFoundError
    IdempotencyConflictError
    EventRejectedError         an event sent to a final run, or a reused key with other data
    InvalidRequestError        (also ValueError)   a request the server could not accept
    UnauthorizedError          missing or wrong API key
  PayloadError                 (also TypeError)   a payload or result that is not JSON
    PayloadTooLargeError       (also ValueError)
  WorkflowRunError             raised from RunHandle.wait_for_completion()
    WorkflowRunFailedError     .error: ErrorInfo
    WorkflowRunCancelledError
  TaskError                    raised by user code to steer retries
    NonRetryableError
    RetryLaterError            .delay_ms
  TaskFailedError              a task failed for good; raised inside the workflow
  NondeterminismError          replay diverged from the recorded history
  LeaseLostError               a worker wrote with a revision it no longer holds
  RecoveryLimitError           a run lost its worker more often than max_recovery_attempts
  IllegalTransitionError       a state change the run's state machine forbids
  StorageError                 backend failures, wrapped at the backend edge
```
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
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


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorInfo:
    """What is stored about an exception: its type, message and traceback, as text.

    Storing text rather than the exception object means any exception, even one that cannot be
    pickled or printed, can end a run with a readable reason.
    """

    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Describe `exc` without ever raising, whatever its `__str__` does."""
        kind = type(exc)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else (f"{kind.__module__}.{kind.__qualname__}")
        )
        try:
            message = str(exc)
        except Exception:  # a broken __str__ must not hide the failure itself
            message = f"<unprintable {kind.__qualname__}>"
        try:
            trace = "".join(traceback.format_exception(exc))
        except Exception:
            trace = None
        return cls(type=name, message=message, traceback=trace)

    def to_json(self) -> dict[str, str | None]:
        """The JSON form stored and sent over the wire."""
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_json(cls, data: dict[str, str | None]) -> ErrorInfo:
        """Rebuild from `to_json()` output."""
        return cls(
            type=str(data["type"]), message=str(data["message"]), traceback=data.get("traceback")
        )


class AikiError(Exception):
    """Base class of every error Aiki raises."""


class ConfigError(AikiError, ValueError):
    """A setting or URL that Aiki cannot use."""


class ClientError(AikiError):
    """A request the server refused or could not answer."""


class ServerUnavailableError(ClientError):
    """The server could not be reached within the retry budget."""


class RunNotFoundError(ClientError, LookupError):
    """No run has the given id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no workflow run with id {run_id!r}")
        self.run_id = run_id


class WorkflowNotFoundError(ClientError, LookupError):
    """An enqueue named a workflow version that no worker has ever registered.

    Most often a typo, or a version not deployed yet; `known` lists the versions of that
    workflow that are. Enqueue with `allow_unknown=True` (`aiki runs enqueue
    --allow-unknown`) to create the run anyway: it waits until a worker serves its version.
    """

    def __init__(self, *, workflow: str, version: str, known: Sequence[str] = ()) -> None:
        text = f"no worker has registered workflow {workflow!r} version {version!r}"
        if known:
            text += f" (known versions: {', '.join(known)})"
        else:
            text += ", nor any other version of it"
        text += "; enqueue with allow_unknown=True (--allow-unknown) to create the run anyway"
        super().__init__(text)
        self.workflow = workflow
        self.version = version
        self.known = tuple(known)


class IdempotencyConflictError(ClientError):
    """The idempotency key is already used by a run with another payload."""

    def __init__(self, *, workflow: str, version: str, idempotency_key: str, run_id: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} of workflow {workflow!r} version {version!r} "
            f"is already used by run {run_id} with a different payload"
        )
        self.workflow = workflow
        self.version = version
        self.idempotency_key = idempotency_key
        self.run_id = run_id


class EventRejectedError(ClientError):
    """`send_event` refused: the run is final, or the key was sent before with other data.

    `idempotency_key` is set when the refusal is a key reused with different data.
    """

    def __init__(
        self, message: str, *, run_id: str, name: str, idempotency_key: str | None = None
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.name = name
        self.idempotency_key = idempotency_key

    @classmethod
    def run_final(cls, *, run_id: str, name: str, state: str) -> EventRejectedError:
        """The run has ended: no code of it waits for events any more."""
        return cls(
            f"event {name!r} refused: workflow run {run_id} is {state} and takes no more events",
            run_id=run_id,
            name=name,
        )

    @classmethod
    def conflict(cls, *, run_id: str, name: str, idempotency_key: str) -> EventRejectedError:
        """The key was used for this run and event name with different data."""
        return cls(
            f"idempotency key {idempotency_key!r} of event {name!r} is already used for "
            f"workflow run {run_id} with different data",
            run_id=run_id,
            name=name,
            idempotency_key=idempotency_key,
        )


class InvalidRequestError(ClientError, ValueError):
    """The server refused a request it cannot read: bad JSON, a wrong type, a missing field.

    `field` names the offending part of the request (e.g. "limit", "outcome.state"), or is
    None when the request as a whole is unreadable.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnauthorizedError(ClientError):
    """The server requires an API key and the request had none, or a wrong one."""


class PayloadError(AikiError, TypeError):
    """A payload or result that cannot be stored as JSON."""


class PayloadTooLargeError(PayloadError, ValueError):
    """A payload or result larger than the configured limit."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class WorkflowRunError(AikiError):
    """A run ended without a result."""

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class WorkflowRunFailedError(WorkflowRunError):
    """The run ended `failed`; `error` says why."""

    def __init__(self, *, run_id: str, error: ErrorInfo) -> None:
        super().__init__(
            f"workflow run {run_id} failed: {error.type}: {error.message}", run_id=run_id
        )
        self.error = error


class WorkflowRunCancelledError(WorkflowRunError):
    """The run ended `cancelled`."""

    def __init__(self, *, run_id: str, reason: str | None) -> None:
        text = f"workflow run {run_id} was cancelled"
        super().__init__(f"{text}: {reason}" if reason else text, run_id=run_id)
        self.reason = reason


class TaskError(AikiError):
    """Raised by task code to steer how the task is retried."""


class NonRetryableError(TaskError):
    """Ends the task at once, whatever its retry policy allows."""


class RetryLaterError(TaskError):
    """Retries the task after `delay_ms`, if its retry policy has attempts left."""

    def __init__(self, message: str = "retry later", *, delay_ms: int) -> None:
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        super().__init__(message)
        self.delay_ms = delay_ms


class TaskFailedError(AikiError):
    """A task failed for good; raised in the workflow where the task was awaited."""

    def __init__(self, *, task_name: str, attempts: int, error: ErrorInfo) -> None:
        super().__init__(
            f"task {task_name!r} failed after {attempts} attempt(s): {error.type}: {error.message}"
        )
        self.task_name = task_name
        self.attempts = attempts
        self.error = error


class NondeterminismError(AikiError):
    """The workflow code made a call its recorded history cannot account for."""


class LeaseLostError(AikiError):
    """A worker wrote to a run with a revision it no longer holds."""

    def __init__(self, run_id: str, revision: int) -> None:
        super().__init__(f"run {run_id}: revision {revision} is no longer current")
        self.run_id = run_id
        self.revision = revision


class RecoveryLimitError(AikiError):
    """A run lost its worker more often than `max_recovery_attempts` allows: it failed.

    Stored as the failed run's error type; a poison run (one that kills every worker that
    takes it) ends this way instead of cycling forever.
    """


class IllegalTransitionError(AikiError):
    """The run's state machine forbids this change."""

    def __init__(self, run_id: str, current: str, action: str) -> None:
        super().__init__(f"run {run_id} is {current}: cannot {action}")
        self.run_id = run_id
        self.current = current
        self.action = action


class StorageError(AikiError):
    """The storage backend failed."""
