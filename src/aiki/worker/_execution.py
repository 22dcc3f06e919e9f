"""One claimed run on a worker: replay recorded task results, run the new ones, report the end.

Replay is content-addressed: a task call's address is (task name, SHA-256 of its payload's
canonical JSON, occurrence). A call whose address holds a final result gets it back without
running; a new call runs the task. A new call made while recorded results are still
unconsumed means the code no longer matches what was recorded, and the run fails with
`NondeterminismError` before the new task has any side effect.

A durable sleep is replayed the same way: its first call records its wake-up time (storage
clock) as a completed task at `aiki.sleep/<name>`, addressed by name and occurrence only (not
by duration), and every later replay waits for that recorded time. A wait for an event records
the event it received (or its timeout) at `aiki.event/<name>`: a replay returns the same data
and never reads the events again for it.

Short waits (sleeps, retry backoffs) happen in place. A long one parks: it waits in place
while other branches of the workflow (asyncio.gather) have work in flight, and once nothing
but parked waits is left, the run suspends until the earliest of them, freeing the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from datetime import datetime
from enum import Enum, auto
from typing import Any

from aiki._core.api import EngineApi
from aiki._core.clock import Clock, to_datetime
from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    EVENT_DEADLINE_DIGEST,
    EVENT_RECEIVED_DIGEST,
    EVENT_TASK_PREFIX,
    EVENT_TIMEOUT_DIGEST,
    SLEEP_TASK_PREFIX,
    ClaimedRun,
    Lease,
    RunOutcome,
    TaskAddress,
    TaskEnd,
    TaskOutcome,
    TaskRecord,
    TaskStart,
    WaitInfo,
    WaitKind,
    event_name,
    sleep_name,
)
from aiki._core.serde import JSONValue, digest, encode, encode_json_value, loads, to_json_value
from aiki._core.states import RunState
from aiki.config import WorkflowRunConfig
from aiki.errors import (
    ErrorInfo,
    LeaseLostError,
    NondeterminismError,
    NonRetryableError,
    PayloadError,
    RetryLaterError,
    TaskFailedError,
)
from aiki.sdk import Task, TaskContext, Workflow, WorkflowRun

_log = logging.getLogger("aiki.worker")

# A task still running after this long gets its start written on its own (see _PendingStart).
_START_WRITE_DELAY_S = 0.05

# How many loop turns without replay progress before a new call may judge that recorded
# results are truly left over (see `_settle`).
_SETTLE_TURNS = 3

# Every sleep's record has the same payload digest: a sleep is addressed by its name and
# occurrence, so a duration computed differently on replay (from `now()`) is no divergence.
_SLEEP_DIGEST = digest("{}")

# Occurrences of `wait_for_event(name)` are counted under this digest; the n-th wait's
# records sit at index n under the digests of `aiki._core.models` (received, timeout, deadline).
_EVENT_WAIT_KEY = "wait"

# A wait with no due time (an event without a timeout), among the parked waits' times.
_NO_DEADLINE = 2**63 - 1


class _Suspended(BaseException):
    """Unwinds the workflow when the run must wait off the worker (long retry backoff, sleep).

    A BaseException, so `except Exception` in workflow code does not swallow it.
    """


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
    ) -> None:
        self.run_id: RunId = claimed.run.id
        self.lease = Lease(run_id=claimed.run.id, revision=claimed.revision)
        self._api = api
        self._claimed = claimed
        self._workflow = workflow
        self._worker_id = worker_id
        self._config = config
        self._clock = clock
        self._recorded: dict[TaskAddress, TaskRecord] = {t.address: t for t in claimed.tasks}
        self._unconsumed = sum(1 for t in claimed.tasks if t.outcome is not TaskOutcome.RETRYING)
        self._occurrences: dict[tuple[str, str], int] = {}
        self._clock_at_claim = clock.now_ms()
        self._view: WorkflowRun[Any] | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake_at_ms: int | None = None
        self._wait_kind = WaitKind.RETRY
        self._wait_detail = ""
        self._event_wait: str | None = None  # an event waited for: a send must wake the run
        # Per event name, the seq of the last event received (recorded): the next is after it.
        self._events_received: dict[str, int] = _events_received(claimed.tasks)
        self._suspending = asyncio.Event()  # set with `_wake_at_ms`: wakes parked waits
        # Long waits (sleeps, retry backoffs) in progress, by id: (until_ms, kind, detail).
        self._parked: dict[int, tuple[int, WaitKind, str]] = {}
        self._park_ids = 0
        self._progress = 0  # moves whenever replay or an operation in flight moves on
        self._decider: asyncio.Task[None] | None = None
        self._ended = False
        self._fatal: NondeterminismError | None = None
        self._stop_reason: StopReason | None = None
        self._main: asyncio.Task[None] | None = None
        self._pending_writes: set[asyncio.Future[Any]] = set()

    # --- control from the worker ------------------------------------------------------------

    def stop(self, reason: StopReason) -> None:
        """Interrupt the workflow code (it sees `asyncio.CancelledError`)."""
        if self._stop_reason is None or reason is StopReason.KILL:
            self._stop_reason = reason
        if self._main is not None and not self._main.done():
            self._main.cancel()

    # --- RunExecution protocol (called by WorkflowRun and Task) -----------------------------

    def now(self) -> datetime:
        return to_datetime(self._storage_now_ms())

    def call_task(self, task: Any, payload: object) -> Awaitable[Any]:
        return self._call_task(task, payload)

    def sleep(self, name: str, duration_ms: int) -> Awaitable[None]:
        return self._sleep(name, duration_ms)

    def wait_for_event(self, name: str, timeout_ms: int | None) -> Awaitable[Any]:
        return self._wait_for_event(name, timeout_ms)

    # --- running ----------------------------------------------------------------------------

    async def execute(self) -> None:
        """Run the workflow to its end (or until stopped) and report what happened."""
        self._main = asyncio.current_task()
        run = self._claimed.run
        outcome: RunOutcome | None = None
        try:
            payload = self._workflow.decode_payload(run.payload)
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
        except _Suspended:
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
            self._ended = True  # what is left of the workflow's branches decides nothing more
            if self._decider is not None:
                self._decider.cancel()
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
            return
        if reason is StopReason.HAND_BACK:
            await self._write(self._api.release(self.lease))
            return
        if self._fatal is not None:
            # Replay diverged: the run fails even if the workflow caught the error.
            outcome = RunOutcome(state=RunState.FAILED, error=ErrorInfo.from_exception(self._fatal))
        elif self._wake_at_ms is not None and reason is None:
            await self._idle.wait()  # let sibling attempts (asyncio.gather) record their results
            until_ms = None if self._wake_at_ms == _NO_DEADLINE else self._wake_at_ms
            if self._event_wait is not None:
                # Whatever else is due first, an event must be able to wake the run.
                wait = WaitInfo(kind=WaitKind.EVENT, until_ms=until_ms, detail=self._event_wait)
            else:
                wait = WaitInfo(kind=self._wait_kind, until_ms=until_ms, detail=self._wait_detail)
            await self._write(self._api.suspend(self.lease, wait))
            return
        if outcome is None:
            return
        await self._finish(outcome)

    async def _finish(self, outcome: RunOutcome) -> None:
        try:
            await self._write(self._api.finish(self.lease, outcome))
        except PayloadError as exc:  # the server refused the result (too large)
            error = ErrorInfo.from_exception(exc)
            await self._write(
                self._api.finish(self.lease, RunOutcome(state=RunState.FAILED, error=error))
            )

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
        if self._wake_at_ms is not None:
            raise _Suspended
        value = to_json_value(payload, what=f"task {task.name!r} payload")
        text = encode_json_value(value, what=f"task {task.name!r} payload", limit=None)
        address = self._next_address(task.name, digest(text))
        record = self._recorded.get(address)
        if record is not None and record.outcome is TaskOutcome.COMPLETED:
            self._consume()
            return task.decode_result(loads(record.result_json or "null"))
        if record is not None and record.outcome is TaskOutcome.FAILED:
            self._consume()
            assert record.error is not None  # a failed record always stores its error
            raise TaskFailedError(task_name=task.name, attempts=record.attempts, error=record.error)
        async with self._busy():
            await self._check_new_call(address)
            first = record.attempts + 1 if record is not None else 1
            return await self._run_attempts(task, address, value, first)

    def _consume(self) -> None:
        self._unconsumed -= 1
        self._progress += 1

    def _next_address(self, task: str, payload_digest: str) -> TaskAddress:
        key = (task, payload_digest)
        index = self._occurrences.get(key, 0)
        self._occurrences[key] = index + 1
        return TaskAddress(task=task, digest=payload_digest, index=index)

    async def _check_new_call(self, address: TaskAddress) -> None:
        """A call with nothing recorded at its address may start only once replay is done."""
        if self._unconsumed > 0:
            await self._settle()
            if self._unconsumed > 0:
                raise self._diverged(address)

    async def _settle(self) -> None:
        """Give concurrent branches of the workflow (asyncio.gather) the chance to replay.

        A branch that reaches a new call may do so before a sibling has consumed its recorded
        result; replayed calls finish without I/O, so a few loop turns without progress mean
        every branch that can replay has.
        """
        quiet = 0
        seen = self._unconsumed
        while self._unconsumed > 0 and quiet < _SETTLE_TURNS:
            await asyncio.sleep(0)
            quiet = quiet + 1 if self._unconsumed == seen else 0
            seen = self._unconsumed

    def _diverged(self, address: TaskAddress) -> NondeterminismError:
        left = sorted(
            _describe(a, call=True)
            for a, r in self._recorded.items()
            if r.outcome is not TaskOutcome.RETRYING and not self._was_consumed(a)
        )
        self._fatal = NondeterminismError(
            f"workflow {self._workflow.name!r} version {self._workflow.version!r}, run "
            f"{self.run_id}: new call to {_describe(address)} "
            f"while recorded results remain unconsumed: {', '.join(left)}. The workflow code "
            "changed in a way its recorded history cannot replay; deploy it as a new version."
        )
        return self._fatal

    def _was_consumed(self, address: TaskAddress) -> bool:
        digest_key = _EVENT_WAIT_KEY if event_name(address.task) is not None else address.digest
        return self._occurrences.get((address.task, digest_key), 0) > address.index

    async def _run_attempts(
        self, task: Task[Any, Any], address: TaskAddress, payload: Any, attempt: int
    ) -> Any:
        while True:
            if self._wake_at_ms is not None:
                raise _Suspended
            outcome = await self._attempt(task, address, payload, attempt)
            if not isinstance(outcome, _Retry):
                return outcome
            if outcome.delay_ms > self._config.max_inline_retry_delay_ms:
                wake = self._storage_now_ms() + outcome.delay_ms
                await self._park(WaitKind.RETRY, wake, task.name)
            else:
                await self._clock.sleep_ms(outcome.delay_ms)
            attempt += 1

    @contextlib.asynccontextmanager
    async def _busy(self) -> AsyncIterator[None]:
        """One operation of the workflow in flight: a task call or a sleep, never nested.

        A suspension waits until every operation in flight is parked (see `_park`).
        """
        self._inflight += 1
        self._progress += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            self._progress += 1
            if self._inflight == 0:
                self._idle.set()
            self._consider_suspending()

    # --- waiting off the worker -------------------------------------------------------------

    async def _park(self, kind: WaitKind, until_ms: int, detail: str) -> None:
        """A long wait (a sleep, a retry backoff) by an operation in flight.

        It waits on this worker's clock while other branches of the workflow (asyncio.gather)
        still have work in flight: that work must not wait for this. Once every operation in
        flight is parked, the run suspends until the earliest parked time, freeing the worker,
        and this raises `_Suspended`; if `until_ms` comes first, this returns.
        """
        self._park_ids += 1
        park_id = self._park_ids
        self._parked[park_id] = (until_ms, kind, detail)
        self._progress += 1
        try:
            self._consider_suspending()
            deadline = None if until_ms == _NO_DEADLINE else self._worker_time_ms(until_ms)
            if not await self._wait_inline(deadline):
                raise _Suspended
        finally:
            del self._parked[park_id]
            self._progress += 1

    def _consider_suspending(self) -> None:
        """Start `_decide` if every operation in flight is parked."""
        if (
            self._decider is None
            and not self._ended
            and self._stop_reason is None
            and self._wake_at_ms is None
            and self._parked
            and self._inflight == len(self._parked)
        ):
            self._decider = asyncio.create_task(
                self._decide(), name=f"run {self.run_id} suspension check"
            )

    async def _decide(self) -> None:
        """Suspend the run if, for a few loop turns, nothing but parked waits is in flight.

        The turns let branches that are replaying, or between two calls, reach their next
        call: replayed calls finish without I/O, as in `_settle`.
        """
        try:
            quiet = 0
            seen = self._progress
            while quiet < _SETTLE_TURNS:
                await asyncio.sleep(0)
                if not self._parked or self._inflight > len(self._parked):
                    return  # work is in flight again: its end looks again
                quiet = quiet + 1 if self._progress == seen else 0
                seen = self._progress
            until_ms, kind, detail = min(self._parked.values())
            self._request_wait(kind, until_ms, detail)
            for _, parked_kind, parked_detail in self._parked.values():
                if parked_kind is WaitKind.EVENT:
                    self._request_wait(parked_kind, _NO_DEADLINE, parked_detail)
        finally:
            self._decider = None

    async def _attempt(
        self, task: Task[Any, Any], address: TaskAddress, payload: Any, attempt: int
    ) -> Any:
        start = _PendingStart(
            self, TaskStart(address=address, attempt=attempt, worker_id=self._worker_id)
        )
        began = time.monotonic()
        try:
            assert self._view is not None  # set before the workflow function runs
            context = TaskContext(
                payload=task.decode_payload(payload), workflow_run=self._view, attempt=attempt
            )
            value = await task.invoke(context)
            result_json = encode(value, what=f"task {task.name!r} result", limit=None)
        except Exception as exc:
            timing = _Timing(began, await start.settle())
            return await self._failed(task, address, attempt, exc, timing)
        except BaseException:
            start.abandon()  # interrupted (cancelled, stopped): no end follows
            raise
        timing = _Timing(began, await start.settle())
        end = self._end(address, attempt, timing, TaskOutcome.COMPLETED, result_json=result_json)
        try:
            await self._report(end)
        except PayloadError as exc:  # result over the server's size limit: a final failure
            return await self._failed(task, address, attempt, NonRetryableError(str(exc)), timing)
        return task.decode_result(loads(result_json))

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
            await self._report(self._end(address, attempt, timing, TaskOutcome.FAILED, error=error))
            raise TaskFailedError(task_name=task.name, attempts=attempt, error=error) from exc
        end = self._end(
            address, attempt, timing, TaskOutcome.RETRYING, error=error, retry_delay_ms=delay
        )
        await self._report(end)
        return _Retry(delay)

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

    async def _report(self, end: TaskEnd) -> None:
        cancel_requested = await self._guard(self._api.finish_task(self.lease, end))
        if cancel_requested:
            self.stop(StopReason.CANCEL)

    async def _guard(self, write: Awaitable[Any]) -> Any:
        """A worker write made from inside the workflow's code.

        A lost lease, or a write that could not be made, stops the run on this worker for
        good, whatever the workflow catches: its lease then expires and another worker (or
        this one) resumes it from what storage holds.
        """
        try:
            return await write
        except LeaseLostError:
            self.stop(StopReason.LOST)
            raise
        except PayloadError:
            raise
        except Exception:
            _log.exception("run %s: a write failed; leaving the run to lease recovery", self.run_id)
            self.stop(StopReason.LOST)
            raise

    def _request_wait(self, kind: WaitKind, until_ms: int, detail: str) -> None:
        """Have the run wait off the worker until `until_ms` (storage clock), or earlier.

        Parked waits then raise `_Suspended`, and so does any further call. The run wakes at
        the earliest time asked for; whatever is not due then waits again.
        """
        if self._wake_at_ms is None or until_ms < self._wake_at_ms:
            self._wake_at_ms = until_ms
            self._wait_kind = kind
            self._wait_detail = detail
        if kind is WaitKind.EVENT and self._event_wait is None:
            self._event_wait = detail
        self._suspending.set()

    def _storage_now_ms(self) -> int:
        # The storage clock as of the claim, moved on by this worker's clock since then.
        return self._claimed.now_ms + (self._clock.now_ms() - self._clock_at_claim)

    def _worker_time_ms(self, storage_ms: int) -> int:
        """A storage time on this worker's clock (the inverse of `_storage_now_ms`)."""
        return storage_ms - self._claimed.now_ms + self._clock_at_claim

    # --- sleeps -----------------------------------------------------------------------------

    async def _sleep(self, name: str, duration_ms: int) -> None:
        if self._wake_at_ms is not None:
            raise _Suspended
        address = self._next_address(SLEEP_TASK_PREFIX + name, _SLEEP_DIGEST)
        record = self._recorded.get(address)
        async with self._busy():
            if record is not None and record.outcome is TaskOutcome.COMPLETED:
                self._consume()
                until_ms = self._recorded_wake(f"sleep {name!r}", record)
            else:
                await self._check_new_call(address)
                until_ms = await self._record_sleep(address, duration_ms)
            await self._sleep_until(name, until_ms)

    async def _record_sleep(self, address: TaskAddress, duration_ms: int) -> int:
        """Record the sleep's wake-up time: one write, before any waiting."""
        until_ms = self._storage_now_ms() + duration_ms
        record: JSONValue = {"duration_ms": duration_ms, "until_ms": until_ms}
        # The history shows how long the sleep is.
        await self._record(address, record, duration_ms=duration_ms)
        return until_ms

    def _recorded_wake(self, what: str, record: TaskRecord) -> int:
        """The `until_ms` a record holds (a sleep's wake-up, an event wait's deadline)."""
        until = self._recorded_value(what, record).get("until_ms")
        if isinstance(until, int) and not isinstance(until, bool):
            return until
        raise self._bad_record(what, record)

    async def _sleep_until(self, name: str, until_ms: int) -> None:
        """Wait for a sleep's wake-up time: in place if it is near, else parked."""
        while True:
            remaining = until_ms - self._storage_now_ms()
            if remaining <= 0:
                return
            if self._wake_at_ms is not None:  # the run suspends: wake it in time for this too
                self._request_wait(WaitKind.SLEEP, until_ms, name)
                raise _Suspended
            if remaining > self._config.max_inline_retry_delay_ms:
                await self._park(WaitKind.SLEEP, until_ms, name)
                return
            if await self._wait_inline(self._worker_time_ms(until_ms)):
                return

    async def _wait_inline(self, deadline_ms: int | None) -> bool:
        """Wait on this worker's clock until `deadline_ms` (None: until the run suspends).

        False if the run is to suspend first: the caller then joins that suspension
        instead of holding it up.
        """
        sleeping = (
            self._suspending.wait()
            if deadline_ms is None
            else self._clock.sleep_until_ms(deadline_ms)
        )
        sleeper = asyncio.create_task(sleeping, name=f"run {self.run_id} sleeping")
        suspending = asyncio.create_task(
            self._suspending.wait(), name=f"run {self.run_id} watching for a suspension"
        )
        try:
            await asyncio.wait((sleeper, suspending), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            suspending.cancel()
        return not self._suspending.is_set()

    # --- events -----------------------------------------------------------------------------

    async def _wait_for_event(self, name: str, timeout_ms: int | None) -> Any:
        if self._wake_at_ms is not None:
            raise _Suspended
        task = EVENT_TASK_PREFIX + name
        index = self._next_address(task, _EVENT_WAIT_KEY).index
        received = TaskAddress(task=task, digest=EVENT_RECEIVED_DIGEST, index=index)
        timed_out = TaskAddress(task=task, digest=EVENT_TIMEOUT_DIGEST, index=index)
        deadline = self._recorded.get(
            TaskAddress(task=task, digest=EVENT_DEADLINE_DIGEST, index=index)
        )
        if deadline is not None:
            self._consume()
        for address in (received, timed_out):
            record = self._recorded.get(address)
            if record is not None and record.outcome is TaskOutcome.COMPLETED:
                self._consume()
                value = self._recorded_value(f"event {name!r}", record)
                if address is timed_out:
                    raise _event_timeout(name, value.get("until_ms"))
                return value.get("data")
        async with self._busy():
            if deadline is None:
                await self._check_new_call(received)
                until_ms = None
            else:
                until_ms = self._recorded_wake(f"event {name!r}", deadline)
            return await self._receive(name, index, timeout_ms, until_ms)

    async def _receive(
        self, name: str, index: int, timeout_ms: int | None, until_ms: int | None
    ) -> Any:
        """Take the next event `name` not yet received, or wait for one until `until_ms`."""
        task = EVENT_TASK_PREFIX + name
        while True:
            after = self._events_received.get(name, 0)
            event = await self._guard(self._api.next_event(self.lease, name, after))
            if event is not None:
                data = loads(event.data_json)
                self._events_received[name] = max(after, event.seq)
                record: JSONValue = {"seq": event.seq, "data": data}
                await self._record(
                    TaskAddress(task=task, digest=EVENT_RECEIVED_DIGEST, index=index), record
                )
                return data
            if until_ms is None and timeout_ms is not None:
                until_ms = self._storage_now_ms() + timeout_ms
                if timeout_ms > 0:
                    address = TaskAddress(task=task, digest=EVENT_DEADLINE_DIGEST, index=index)
                    await self._record(address, {"until_ms": until_ms})
            if until_ms is not None and self._storage_now_ms() >= until_ms:
                address = TaskAddress(task=task, digest=EVENT_TIMEOUT_DIGEST, index=index)
                await self._record(address, {"until_ms": until_ms})
                raise _event_timeout(name, until_ms)
            # Parked until the deadline (then look once more) or until the run suspends.
            await self._park(WaitKind.EVENT, _NO_DEADLINE if until_ms is None else until_ms, name)

    async def _record(
        self, address: TaskAddress, value: JSONValue, *, duration_ms: int = 0
    ) -> None:
        """Write an engine record as a completed task, in one write.

        Records are a sleep's wake-up time, an event received, an event wait's deadline or
        its timeout.
        """
        end = TaskEnd(
            address=address,
            attempt=1,
            worker_id=self._worker_id,
            outcome=TaskOutcome.COMPLETED,
            duration_ms=duration_ms,
            result_json=encode_json_value(value, what=f"{address.task} record", limit=None),
            start_reported=False,
        )
        await self._report(end)

    def _recorded_value(self, what: str, record: TaskRecord) -> dict[str, Any]:
        value = loads(record.result_json or "null")
        if not isinstance(value, dict):
            raise self._bad_record(what, record)
        return value

    def _bad_record(self, what: str, record: TaskRecord) -> NondeterminismError:
        self._fatal = NondeterminismError(
            f"workflow {self._workflow.name!r} version {self._workflow.version!r}, run "
            f"{self.run_id}: the record of {what} is not one Aiki wrote: {record.result_json}"
        )
        return self._fatal


class _PendingStart:
    """A task attempt's start, written only if the task is still running after a short delay.

    Most tasks end sooner: their end then carries the start (`TaskEnd.start_reported=False`),
    one write instead of two. A long task's start is in storage while it runs, so the
    timeline shows it, and an attempt cut short by a crash leaves its start behind.
    """

    __slots__ = ("_execution", "_start", "_timer", "_write")

    def __init__(self, execution: RunExecution, start: TaskStart) -> None:
        self._execution = execution
        self._start = start
        self._write: asyncio.Future[Any] | None = None
        self._timer = asyncio.get_running_loop().call_later(_START_WRITE_DELAY_S, self._report)

    def _report(self) -> None:
        execution = self._execution
        self._write = asyncio.ensure_future(
            execution._guard(execution._api.start_task(execution.lease, self._start))
        )

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
            pending = self._execution._pending_writes
            pending.add(write)
            write.add_done_callback(pending.discard)
            write.add_done_callback(_ignore_outcome)


def _ignore_outcome(write: asyncio.Future[Any]) -> None:
    # Nobody waits for an abandoned attempt's start: its failure (the lease lost, most
    # likely) was already dealt with by `_guard`. Reading it keeps asyncio from logging it.
    if not write.cancelled():
        write.exception()


class _Timing:
    __slots__ = ("began", "start_reported")

    def __init__(self, began: float, start_reported: bool) -> None:
        self.began = began
        self.start_reported = start_reported


class _Retry:
    __slots__ = ("delay_ms",)

    def __init__(self, delay_ms: int) -> None:
        self.delay_ms = delay_ms


def _describe(address: TaskAddress, *, call: bool = False) -> str:
    """A recorded call for a person: `task 'x' (payload 1a2b..., call 2)`, `sleep 'y'`."""
    sleep = sleep_name(address.task)
    event = event_name(address.task)
    details = [f"payload {address.digest[:12]}"] if sleep is None and event is None else []
    if call:
        details.append(f"call {address.index + 1}")
    if sleep is not None:
        what = f"sleep {sleep!r}"
    elif event is not None:
        what = f"wait for event {event!r}"
    else:
        what = f"task {address.task!r}"
    return what + (f" ({', '.join(details)})" if details else "")


def _events_received(records: tuple[TaskRecord, ...]) -> dict[str, int]:
    """Per event name, the highest seq among the recorded events received."""
    received: dict[str, int] = {}
    for record in records:
        name = event_name(record.address.task)
        if name is None or record.address.digest != EVENT_RECEIVED_DIGEST:
            continue
        value = loads(record.result_json or "null")
        seq = value.get("seq") if isinstance(value, dict) else None
        if isinstance(seq, int) and not isinstance(seq, bool):
            received[name] = max(received.get(name, 0), seq)
    return received


def _event_timeout(name: str, until_ms: object) -> TimeoutError:
    when = (
        f" by {to_datetime(until_ms):%Y-%m-%d %H:%M:%S.%f} UTC" if isinstance(until_ms, int) else ""
    )
    return TimeoutError(f"no event {name!r} came{when}")


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
