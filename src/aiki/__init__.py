"""Aiki: durable workflows as plain async Python.

Define tasks with `aiki.task`, workflows with `aiki.workflow`, start a server with
`aiki.server`, connect with `aiki.create_client` and execute with `aiki.worker`.
"""

from aiki._core.models import EventSent, HistoryEvent, RunStatus, WaitInfo
from aiki._core.retry import Retry
from aiki._core.states import RunState
from aiki.client import Client, RunHandle, create_client
from aiki.config import ServerSettings, SubscriberConfig, WorkflowRunConfig
from aiki.errors import (
    AikiError,
    ClientError,
    ConfigError,
    ErrorInfo,
    EventRejectedError,
    IdempotencyConflictError,
    IllegalTransitionError,
    InvalidRequestError,
    LeaseLostError,
    NondeterminismError,
    NonRetryableError,
    PayloadError,
    PayloadTooLargeError,
    RecoveryLimitError,
    RetryLaterError,
    RunNotFoundError,
    ServerUnavailableError,
    StorageError,
    TaskError,
    TaskFailedError,
    UnauthorizedError,
    WorkflowNotFoundError,
    WorkflowRunCancelledError,
    WorkflowRunError,
    WorkflowRunFailedError,
)
from aiki.sdk import Params, Registry, Task, TaskContext, Workflow, WorkflowRun, task, workflow
from aiki.server import Server, server
from aiki.worker import Worker, worker

__all__ = [
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
