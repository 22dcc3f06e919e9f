"""What workflow and task code receives: `WorkflowRun` and `TaskContext`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from aiki._core.ids import RunId

P = TypeVar("P")

_logger = logging.getLogger("aiki.workflow")


class RunExecution(Protocol):
    """The worker's side of a run: what `WorkflowRun` delegates to."""

    def call_task(self, task: Any, payload: object) -> Awaitable[Any]:
        """Replay or run `task` (an `aiki.sdk.task.Task`) with `payload`."""
        ...

    def now(self) -> datetime:
        """The storage clock's current time."""
        ...


@dataclass(frozen=True, slots=True)
class Params(Generic[P]):
    """The run's input, as the concept document names it (`workflow_run.params.payload`)."""

    payload: P


class WorkflowRun(Generic[P]):
    """One execution of a workflow, as the workflow function sees it.

    Pass it to every task call (`await my_task.run(workflow_run, payload=...)`): that is how
    the call is recorded and, on resume, replayed.
    """

    __slots__ = ("_execution", "attempt", "id", "logger", "name", "params", "version")

    def __init__(
        self,
        *,
        id: RunId,
        name: str,
        version: str,
        payload: P,
        attempt: int,
        execution: RunExecution,
    ) -> None:
        self.id = id
        self.name = name
        self.version = version
        self.params = Params(payload)
        self.attempt = attempt  # how many times a worker has taken this run, from 1
        self.logger = logging.LoggerAdapter(
            _logger, {"run_id": id, "workflow": name, "version": version}
        )
        self._execution = execution

    @property
    def payload(self) -> P:
        """The payload the run was enqueued with."""
        return self.params.payload

    def now(self) -> datetime:
        """The current time on the storage clock (UTC)."""
        return self._execution.now()

    def __repr__(self) -> str:
        return f"WorkflowRun(id={self.id!r}, name={self.name!r}, version={self.version!r})"


@dataclass(frozen=True, slots=True)
class TaskContext(Generic[P]):
    """What a task's run function receives."""

    payload: P
    workflow_run: WorkflowRun[Any]
    attempt: int  # 1 for the first try, 2 for the first retry, ...
