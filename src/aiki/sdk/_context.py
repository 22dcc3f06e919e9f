"""What workflow and task code receives: `WorkflowRun` and `TaskContext`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from aiki._core.ids import RunId
from aiki._core.models import check_event_name
from aiki.sdk._execution_protocol import RunExecution
from aiki.sdk._validate import check_name, sleep_duration_ms

P = TypeVar("P")

_logger = logging.getLogger("aiki.workflow")


@dataclass(frozen=True, slots=True)
class Params(Generic[P]):
    """The run's input, also reachable as `workflow_run.params.payload`."""

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

    async def sleep(self, name: str, duration: timedelta | float) -> None:
        """Sleep durably: the run resumes after `duration`, even across crashes and restarts.

        The first time the run reaches the sleep, its wake-up time (storage clock) is recorded.
        A short sleep waits in place; a longer one puts the run in `waiting` and frees the
        worker until the wake-up time. On replay the recorded wake-up time holds: a sleep that
        is over returns at once, and a sleep interrupted by a crash is not started over.

        A sleep is identified by its name and how many sleeps of that name came before it in
        the run, not by its duration: on replay the duration given is not looked at, so a
        duration computed from `now()` is safe. Like task calls, a sleep reached for the first
        time while recorded results remain unconsumed fails the run with
        `NondeterminismError`.

        Args:
            name: Names the sleep in the run's history (`"coffee"`); a sleep in a loop may
                keep its name.
            duration: A `timedelta`, or a number of seconds; zero returns at once (and is
                recorded all the same).

        Raises:
            TypeError: `name` is not a str, or `duration` is neither a timedelta nor a number.
            ValueError: `name` is empty, or `duration` is negative, not finite or too long.
            asyncio.CancelledError: the run was cancelled while sleeping.
        """
        check_name(name, kind=f"workflow {self.name!r}: sleep")
        duration_ms = sleep_duration_ms(duration, what=f"workflow {self.name!r}: sleep {name!r}")
        await self._execution.sleep(name, duration_ms)

    async def wait_for_event(self, name: str, timeout: timedelta | float | None = None) -> Any:
        """Wait durably for the next event `name` sent to this run; return its data.

        Events of one name are received one per call, in the order they were sent; an event
        sent before the run waits for it is kept until it does. The event received is
        recorded: on replay the call returns the same data at once, and a later event is
        never received in its place. While no event is there the run waits off the worker
        (`waiting`, kind `event`), and sending one wakes it.

        A timeout is recorded too, from the first time the run reaches the wait: a replay
        waits for the same deadline, and a wait that timed out times out again on replay.

        Args:
            name: The event's name, as `RunHandle.send_event(name, ...)` sends it.
            timeout: A `timedelta` or a number of seconds; None waits for as long as it takes.

        Returns:
            The event's data, as a JSON value (a pydantic model sent arrives as its JSON).

        Raises:
            TimeoutError: no event came within `timeout`.
            TypeError: `name` is not a str, or `timeout` is neither a timedelta nor a number.
            ValueError: `name` is empty or too long, or `timeout` is negative or not finite.
            asyncio.CancelledError: the run was cancelled while waiting.
        """
        check_event_name(name)
        timeout_ms = (
            None
            if timeout is None
            else sleep_duration_ms(timeout, what=f"workflow {self.name!r}: event {name!r} timeout")
        )
        return await self._execution.wait_for_event(name, timeout_ms)

    def __repr__(self) -> str:
        return f"WorkflowRun(id={self.id!r}, name={self.name!r}, version={self.version!r})"


def execution_of(workflow_run: WorkflowRun[Any]) -> RunExecution:
    """The worker's side of `workflow_run`, for the SDK's own calls (`Task.run`)."""
    return workflow_run._execution


@dataclass(frozen=True, slots=True)
class TaskContext(Generic[P]):
    """What a task's run function receives."""

    payload: P
    workflow_run: WorkflowRun[Any]
    attempt: int  # 1 for the first try, 2 for the first retry, ...
