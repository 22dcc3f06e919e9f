"""The attempts of a new task call: tries and retry backoffs, each attempt's start and end reported.

A short backoff waits in place; a longer one parks (see `aiki.worker._suspension`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiki._core.ids import WorkerId
from aiki._core.models import TaskAddress, TaskEnd, TaskOutcome, TaskStart, WaitKind
from aiki._core.serde import encode_json_value, to_json_value
from aiki.config import WorkflowRunConfig
from aiki.errors import (
    ErrorInfo,
    NonRetryableError,
    PayloadError,
    RetryLaterError,
    TaskFailedError,
)
from aiki.sdk import Task, TaskContext, WorkflowRun
from aiki.worker._run_clock import RunClock
from aiki.worker._suspension import Suspended, SuspensionScheduler
from aiki.worker._writes import RunWrites

# A task still running after this long gets its start written on its own (see _PendingStart).
_START_WRITE_DELAY_S = 0.05


class TaskAttempts:
    """Runs the attempts of one run's new task calls."""

    def __init__(
        self,
        *,
        worker_id: WorkerId,
        config: WorkflowRunConfig,
        clock: RunClock,
        scheduler: SuspensionScheduler,
        writes: RunWrites,
    ) -> None:
        self._worker_id = worker_id
        self._config = config
        self._clock = clock
        self._scheduler = scheduler
        self._writes = writes
        self._abandoned_starts: set[asyncio.Future[Any]] = set()

    async def run(
        self,
        workflow_run: WorkflowRun[Any],
        task: Task[Any, Any],
        address: TaskAddress,
        payload: Any,
        attempt: int,
    ) -> Any:
        """Try `task` from attempt number `attempt` on, until it succeeds or fails for good."""
        while True:
            if self._scheduler.suspending:
                raise Suspended
            outcome = await self._attempt(workflow_run, task, address, payload, attempt)
            if not isinstance(outcome, _Retry):
                return outcome
            if outcome.delay_ms > self._config.max_inline_retry_delay_ms:
                await self._scheduler.park(WaitKind.RETRY, outcome.wake_ms, task.name)
            else:
                await self._clock.worker.sleep_ms(outcome.delay_ms)
            attempt += 1

    async def _attempt(
        self,
        workflow_run: WorkflowRun[Any],
        task: Task[Any, Any],
        address: TaskAddress,
        payload: Any,
        attempt: int,
    ) -> Any:
        start = _PendingStart(
            self._writes,
            TaskStart(address=address, attempt=attempt, worker_id=self._worker_id),
            self._abandoned_starts,
        )
        # What the run's earlier tasks returned goes to storage before this one acts on it.
        self._writes.send_held()
        began = time.monotonic()
        try:
            context = TaskContext(
                payload=task.decode_payload(payload), workflow_run=workflow_run, attempt=attempt
            )
            what = f"task {task.name!r} result"
            # The workflow gets the JSON value the text was made from, not the text parsed
            # again: the same value a replay would parse out of the record.
            result = to_json_value(await task.invoke(context), what=what)
            result_json = encode_json_value(result, what=what, limit=None)
        except Exception as exc:
            timing = _Timing(began, await start.settle())
            return await self._failed(task, address, attempt, exc, timing)
        except BaseException:
            start.abandon()  # interrupted (cancelled, stopped): no end follows
            raise
        timing = _Timing(began, await start.settle())
        end = self._end(address, attempt, timing, TaskOutcome.COMPLETED, result_json=result_json)
        if self._writes.hold_end(end):
            return task.decode_result(result)  # the run's next write records it
        try:
            await self._writes.finish_task(end)
        except PayloadError as exc:  # result over the server's size limit: a final failure
            return await self._failed(task, address, attempt, NonRetryableError(str(exc)), timing)
        return task.decode_result(result)

    async def _failed(
        self,
        task: Task[Any, Any],
        address: TaskAddress,
        attempt: int,
        exc: Exception,
        timing: _Timing,
    ) -> _Retry:
        error = ErrorInfo.from_exception(exc)
        delay = _retry_delay(task, attempt, exc)
        if delay is None:
            end = self._end(address, attempt, timing, TaskOutcome.FAILED, error=error)
            await self._writes.finish_task(end)
            raise TaskFailedError(task_name=task.name, attempts=attempt, error=error) from exc
        # The backoff counts from the failure, not from when its write was answered: how long
        # the write took (a batch on its way, a slow server) must not push the retry later.
        wake_ms = self._clock.storage_now_ms() + delay
        end = self._end(
            address, attempt, timing, TaskOutcome.RETRYING, error=error, retry_delay_ms=delay
        )
        await self._writes.finish_task(end)
        return _Retry(delay, wake_ms)

    def _end(
        self,
        address: TaskAddress,
        attempt: int,
        timing: _Timing,
        outcome: TaskOutcome,
        *,
        result_json: str | None = None,
        error: ErrorInfo | None = None,
        retry_delay_ms: int | None = None,
    ) -> TaskEnd:
        return TaskEnd(
            address=address,
            attempt=attempt,
            worker_id=self._worker_id,
            outcome=outcome,
            duration_ms=int((time.monotonic() - timing.began) * 1000),
            result_json=result_json,
            error=error,
            retry_delay_ms=retry_delay_ms,
            start_reported=timing.start_reported,
        )


class _PendingStart:
    """A task attempt's start, written only if the task is still running after a short delay.

    Most tasks end sooner: their end then carries the start (`TaskEnd.start_reported=False`),
    one write instead of two. A long task's start is in storage while it runs, so the
    timeline shows it, and an attempt cut short by a crash leaves its start behind.
    """

    __slots__ = ("_abandoned", "_start", "_timer", "_write", "_writes")

    def __init__(
        self, writes: RunWrites, start: TaskStart, abandoned: set[asyncio.Future[Any]]
    ) -> None:
        self._writes = writes
        self._start = start
        self._abandoned = abandoned
        self._write: asyncio.Future[Any] | None = None
        self._timer = asyncio.get_running_loop().call_later(_START_WRITE_DELAY_S, self._report)

    def _report(self) -> None:
        self._write = asyncio.ensure_future(self._writes.start_task(self._start))

    async def settle(self) -> bool:
        """Before the end is written: whether the start is already in storage."""
        self._timer.cancel()
        if self._write is None:
            return False
        await self._write  # the end must come after the start
        return True

    def abandon(self) -> None:
        """The attempt was interrupted: no end will follow."""
        self._timer.cancel()
        write = self._write
        if write is not None:  # may still land; keep it referenced until it has
            self._abandoned.add(write)
            write.add_done_callback(self._abandoned.discard)
            write.add_done_callback(_ignore_outcome)


def _ignore_outcome(write: asyncio.Future[Any]) -> None:
    # Nobody waits for an abandoned attempt's start: its failure (the lease lost, most
    # likely) was already dealt with by `RunWrites`. Reading it keeps asyncio from logging it.
    if not write.cancelled():
        write.exception()


class _Timing:
    __slots__ = ("began", "start_reported")

    def __init__(self, began: float, start_reported: bool) -> None:
        self.began = began
        self.start_reported = start_reported


class _Retry:
    __slots__ = ("delay_ms", "wake_ms")

    def __init__(self, delay_ms: int, wake_ms: int) -> None:
        self.delay_ms = delay_ms
        self.wake_ms = wake_ms  # storage clock


def _retry_delay(task: Task[Any, Any], attempt: int, exc: Exception) -> int | None:
    """Milliseconds until the next attempt, or None when the task has failed for good."""
    if isinstance(exc, NonRetryableError | PayloadError):
        return None
    delay = task.retry.delay_after(attempt)
    if delay is None:
        return None
    if isinstance(exc, RetryLaterError):
        return exc.delay_ms
    return delay
