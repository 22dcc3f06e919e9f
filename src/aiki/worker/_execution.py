"""One claimed run on a worker: replay recorded task results, run the new ones, report the end.

`RunExecution` coordinates the pieces, each in its own module: the replay ledger
(`_ledger`: what the history recorded and what replay has consumed), the attempts of new task
calls (`_attempts`), durable sleeps and event waits (`_waits`), and the suspension scheduler
(`_suspension`: when the run leaves the worker to wait). It is what `WorkflowRun` delegates to
(`aiki.sdk`'s `RunExecution` protocol), and it reports how the run ended.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable
from dataclasses import replace
from datetime import datetime
from enum import Enum, auto
from typing import Any

from aiki._core.api import EngineApi
from aiki._core.clock import Clock, to_datetime
from aiki._core.ids import RunId, WorkerId
from aiki._core.models import ClaimedRun, Lease, RunOutcome, TaskOutcome, WaitInfo
from aiki._core.serde import digest, encode, encode_json_value, loads, to_json_value
from aiki._core.states import RunState
from aiki.config import WorkflowRunConfig
from aiki.errors import ErrorInfo, LeaseLostError, PayloadError, TaskFailedError
from aiki.sdk import Task, Workflow, WorkflowRun
from aiki.worker._attempts import TaskAttempts
from aiki.worker._ledger import Ledger
from aiki.worker._run_clock import RunClock
from aiki.worker._suspension import Suspended, SuspensionScheduler
from aiki.worker._waits import DurableWaits
from aiki.worker._writes import RunWrites

_log = logging.getLogger("aiki.worker")


class StopReason(Enum):
    """Why the worker stopped a run's code from the outside."""

    CANCEL = auto()  # the user cancelled the run: report `cancelled`
    LOST = auto()  # the lease is gone: write nothing more
    HAND_BACK = auto()  # the worker is stopping: hand the run back
    KILL = auto()  # simulated crash: write nothing


class RunExecution:
    """Executes one claimed run of `workflow` on behalf of worker `worker_id`."""

    def __init__(
        self,
        *,
        api: EngineApi,
        claimed: ClaimedRun,
        workflow: Workflow[Any, Any],
        worker_id: WorkerId,
        config: WorkflowRunConfig,
        clock: Clock,
        max_result_bytes: int,
    ) -> None:
        self.run_id: RunId = claimed.run.id
        self.lease = Lease(run_id=claimed.run.id, revision=claimed.revision)
        self._api = api
        self._claimed = claimed
        self._workflow = workflow
        self._clock = RunClock(clock, claimed.now_ms)
        self._ledger = Ledger(claimed.tasks, workflow=workflow, run_id=self.run_id)
        self._scheduler = SuspensionScheduler(
            run_id=self.run_id, clock=self._clock, ledger=self._ledger
        )
        writes = RunWrites(
            api=api,
            lease=self.lease,
            lease_lost=functools.partial(self.stop, StopReason.LOST),
            cancel_requested=functools.partial(self.stop, StopReason.CANCEL),
            max_result_bytes=max_result_bytes,
        )
        self._writes = writes
        self._attempts = TaskAttempts(
            worker_id=worker_id,
            config=config,
            clock=self._clock,
            scheduler=self._scheduler,
            writes=writes,
        )
        self._waits = DurableWaits(
            records=claimed.tasks,
            worker_id=worker_id,
            config=config,
            clock=self._clock,
            ledger=self._ledger,
            scheduler=self._scheduler,
            writes=writes,
        )
        self._view: WorkflowRun[Any] | None = None
        self._stop_reason: StopReason | None = None
        self._main: asyncio.Task[None] | None = None

    # --- control from the worker ------------------------------------------------------------

    def stop(self, reason: StopReason) -> None:
        """Interrupt the workflow code (it sees `asyncio.CancelledError`)."""
        if self._stop_reason is None or reason is StopReason.KILL:
            self._stop_reason = reason
        self._scheduler.stop()
        if self._main is not None and not self._main.done():
            self._main.cancel()

    # --- RunExecution protocol (called by WorkflowRun and Task) -----------------------------

    def now(self) -> datetime:
        return to_datetime(self._clock.storage_now_ms())

    def call_task(self, task: Any, payload: object) -> Awaitable[Any]:
        return self._call_task(task, payload)

    def sleep(self, name: str, duration_ms: int) -> Awaitable[None]:
        return self._waits.sleep(name, duration_ms)

    def wait_for_event(self, name: str, timeout_ms: int | None) -> Awaitable[Any]:
        return self._waits.wait_for_event(name, timeout_ms)

    # --- running ----------------------------------------------------------------------------

    async def execute(self) -> None:
        """Run the workflow to its end (or until stopped) and report what happened."""
        self._main = asyncio.current_task()
        run = self._claimed.run
        outcome: RunOutcome | None = None
        try:
            payload = self._workflow.decode_payload_json(run.payload_json)
            self._view = WorkflowRun(
                id=run.id,
                name=run.workflow,
                version=run.version,
                payload=payload,
                attempt=run.attempt,
                execution=self,
            )
            result = await self._workflow.execute(self._view)
            outcome = self._completed(result)
        except Suspended:
            if self._stop_reason is StopReason.CANCEL:
                # Cancelled as the code was unwinding to wait: nothing runs any more either way.
                outcome = RunOutcome(state=RunState.CANCELLED)
        except asyncio.CancelledError:
            if self._stop_reason is None:
                raise  # cancelled by something other than the worker: not ours to judge
            if self._stop_reason is StopReason.CANCEL:
                outcome = RunOutcome(state=RunState.CANCELLED)  # storage keeps the reason given
        except Exception as exc:
            outcome = RunOutcome(state=RunState.FAILED, error=ErrorInfo.from_exception(exc))
        finally:
            self._scheduler.end()
        await self._conclude(outcome)

    def _completed(self, result: object) -> RunOutcome:
        try:
            text = encode(result, what=f"workflow {self._workflow.name!r} result", limit=None)
        except PayloadError as exc:
            return RunOutcome(state=RunState.FAILED, error=ErrorInfo.from_exception(exc))
        return RunOutcome(state=RunState.COMPLETED, result_json=text)

    async def _conclude(self, outcome: RunOutcome | None) -> None:
        reason = self._stop_reason
        if reason in (StopReason.LOST, StopReason.KILL):
            self._writes.drop_held()
            return
        if reason is StopReason.HAND_BACK:
            await self._write(self._release())
            return
        if self._ledger.fatal is not None:
            # Replay diverged: the run fails even if the workflow caught the error.
            error = ErrorInfo.from_exception(self._ledger.fatal)
            outcome = RunOutcome(state=RunState.FAILED, error=error)
        elif self._scheduler.suspending and reason is None:
            wait = await self._scheduler.wait()
            await self._write(self._suspend(wait))
            return
        if outcome is None:
            return
        await self._finish(outcome)

    async def _release(self) -> None:
        await self._writes.write_held()  # what finished is kept for the next owner
        await self._api.release(self.lease)

    async def _suspend(self, wait: WaitInfo) -> None:
        await self._writes.write_held()
        await self._api.suspend(self.lease, wait)

    async def _finish(self, outcome: RunOutcome) -> None:
        try:
            outcome = replace(outcome, task_ends=await self._writes.take_held())
        except LeaseLostError:
            return  # an earlier write of the run failed: left to its lease
        try:
            await self._write(self._api.finish(self.lease, outcome))
        except PayloadError as exc:  # the server refused the result (too large)
            error = ErrorInfo.from_exception(exc)
            failed = RunOutcome(state=RunState.FAILED, error=error, task_ends=outcome.task_ends)
            await self._write(self._api.finish(self.lease, failed))

    async def _write(self, write: Awaitable[None]) -> None:
        """Make a write that must not be lost to a cancellation of this run's code."""
        task = asyncio.ensure_future(write)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task  # losing this write would leave the run for a lease to expire
            raise
        except LeaseLostError:
            _log.info("run %s: lease lost, leaving it to its new owner", self.run_id)

    # --- task calls -------------------------------------------------------------------------

    async def _call_task(self, task: Task[Any, Any], payload: object) -> Any:
        """Replay the call's recorded final result, or run the task's attempts."""
        if self._scheduler.suspending:
            raise Suspended
        value = to_json_value(payload, what=f"task {task.name!r} payload")
        text = encode_json_value(value, what=f"task {task.name!r} payload", limit=None)
        address = self._ledger.next_address(task.name, digest(text))
        record = self._ledger.recorded(address)
        if record is not None and record.outcome is TaskOutcome.COMPLETED:
            self._ledger.consume()
            return task.decode_result(loads(record.result_json or "null"))
        if record is not None and record.outcome is TaskOutcome.FAILED:
            self._ledger.consume()
            assert record.error is not None  # a failed record always stores its error
            raise TaskFailedError(task_name=task.name, attempts=record.attempts, error=record.error)
        async with self._scheduler.busy():
            await self._ledger.check_new_call(address)
            first = record.attempts + 1 if record is not None else 1
            assert self._view is not None  # set before the workflow function runs
            return await self._attempts.run(self._view, task, address, value, first)
