"""Tasks: the retryable units of work a workflow calls."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar, cast, overload

from aiki._core.retry import Retry
from aiki._core.serde import Decoder, JSONValue
from aiki.sdk._context import TaskContext, WorkflowRun, execution_of
from aiki.sdk._signature import check_single_argument, first_argument_type, return_type
from aiki.sdk._validate import check_task_name

P = TypeVar("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """A named unit of work with a retry policy. Build one with `aiki.task(...)`."""

    __slots__ = ("_fn", "_is_async", "_payload", "_result", "name", "retry")

    def __init__(
        self,
        *,
        name: str,
        run: Callable[[TaskContext[P]], Awaitable[R]] | Callable[[TaskContext[P]], R],
        retry: Retry | None = None,
    ) -> None:
        self.name = check_task_name(name)
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(
                f"task {name!r}: retry must be an aiki.Retry, got {type(retry).__name__}"
            )
        check_single_argument(run, what=f"task {name!r}", argument="TaskContext")
        self.retry = retry or Retry.never()
        self._fn = run
        self._is_async = inspect.iscoroutinefunction(run)
        self._payload = Decoder(first_argument_type(run))
        self._result = Decoder(return_type(run))

    async def run(self, workflow_run: WorkflowRun[Any], payload: P | None = None) -> R:
        """Run the task as part of `workflow_run`, or replay its recorded result.

        Raises:
            TaskFailedError: the task failed for good (now or in a recorded attempt).
            PayloadError: the payload is not JSON.
        """
        if not isinstance(workflow_run, WorkflowRun):
            raise TypeError(
                f"task {self.name!r}: run() takes the WorkflowRun as its first argument, "
                f"got {type(workflow_run).__name__}"
            )
        result: R = await execution_of(workflow_run).call_task(self, payload)
        return result

    async def invoke(self, context: TaskContext[P]) -> object:
        """Call the run function once; a sync one runs in a thread so the loop never blocks."""
        if self._is_async:
            return await self._fn(context)  # type: ignore[misc]  # async: checked in __init__
        outcome = await asyncio.to_thread(self._fn, context)
        if inspect.isawaitable(outcome):  # a lambda or partial that returns a coroutine
            return await outcome
        return outcome

    def decode_payload(self, value: JSONValue) -> P:
        """The payload as the run function's annotation wants it."""
        payload: P = self._payload.decode(value)
        return payload

    def decode_result(self, value: JSONValue) -> R:
        """A stored result as the run function's return annotation wants it."""
        result: R = self._result.decode(value)
        return result

    def __repr__(self) -> str:
        return f"Task(name={self.name!r}, retry={self.retry!r})"


class _TaskDecorator(Protocol):
    @overload
    def __call__(self, run: Callable[[TaskContext[P]], Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, run: Callable[[TaskContext[P]], R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str,
    run: Callable[[TaskContext[P]], Awaitable[R]],
    retry: Retry | None = None,
) -> Task[P, R]: ...
@overload
def task(
    *,
    name: str,
    run: Callable[[TaskContext[P]], R],
    retry: Retry | None = None,
) -> Task[P, R]: ...
@overload
def task(*, name: str, retry: Retry | None = None) -> _TaskDecorator: ...
def task(
    *,
    name: str,
    run: Callable[[TaskContext[Any]], Any] | None = None,
    retry: Retry | None = None,
) -> Task[Any, Any] | _TaskDecorator:
    """Define a task, as a call (`task(name=..., run=fn)`) or a decorator (`@task(name=...)`).

    Args:
        name: Unique name of the task; with the payload it addresses recorded results.
        run: The function doing the work; it gets a `TaskContext`. Sync functions run in a
            thread.
        retry: Retry policy; `Retry.never()` by default.

    Raises:
        ValueError: empty name, a name in the reserved `aiki.` namespace, or invalid retry
            values.
        TypeError: `run` does not take exactly one argument.
    """
    check_task_name(name)
    if run is not None:
        return Task(name=name, run=run, retry=retry)

    def decorate(fn: Callable[[TaskContext[Any]], Any]) -> Task[Any, Any]:
        return Task(name=name, run=fn, retry=retry)

    return cast(_TaskDecorator, decorate)
