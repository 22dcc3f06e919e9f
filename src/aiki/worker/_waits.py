"""Durable waits: sleeps and event waits, their wake-up times and events recorded and replayed.

A durable sleep is replayed as a task call is: its first call records its wake-up time
(storage clock) as a completed task at `aiki.sleep/<name>`, addressed by name and occurrence
only (not by duration), and every later replay waits for that recorded time. A wait for an
event records the event it received (or its timeout) at `aiki.event/<name>`: a replay
returns the same data and never reads the events again for it.
"""

from __future__ import annotations

from typing import Any

from aiki._core.clock import to_datetime
from aiki._core.ids import WorkerId
from aiki._core.models import (
    EVENT_DEADLINE_DIGEST,
    EVENT_RECEIVED_DIGEST,
    EVENT_TASK_PREFIX,
    EVENT_TIMEOUT_DIGEST,
    SLEEP_TASK_PREFIX,
    TaskAddress,
    TaskEnd,
    TaskOutcome,
    TaskRecord,
    WaitKind,
    event_name,
)
from aiki._core.serde import JSONValue, digest, encode_json_value, loads
from aiki.config import WorkflowRunConfig
from aiki.worker._ledger import EVENT_WAIT_KEY, Ledger
from aiki.worker._run_clock import RunClock
from aiki.worker._suspension import NO_DEADLINE, Suspended, SuspensionScheduler
from aiki.worker._writes import RunWrites

# Every sleep's record has the same payload digest: a sleep is addressed by its name and
# occurrence, so a duration computed differently on replay (from `now()`) is no divergence.
_SLEEP_DIGEST = digest("{}")


class DurableWaits:
    """One run's sleeps and event waits."""

    def __init__(
        self,
        *,
        records: tuple[TaskRecord, ...],
        worker_id: WorkerId,
        config: WorkflowRunConfig,
        clock: RunClock,
        ledger: Ledger,
        scheduler: SuspensionScheduler,
        writes: RunWrites,
    ) -> None:
        self._worker_id = worker_id
        self._config = config
        self._clock = clock
        self._ledger = ledger
        self._scheduler = scheduler
        self._writes = writes
        # Per event name, the seq of the last event received (recorded): the next is after it.
        self._events_received: dict[str, int] = _events_received(records)

    # --- sleeps -----------------------------------------------------------------------------

    async def sleep(self, name: str, duration_ms: int) -> None:
        if self._scheduler.suspending:
            raise Suspended
        address = self._ledger.next_address(SLEEP_TASK_PREFIX + name, _SLEEP_DIGEST)
        record = self._ledger.recorded(address)
        async with self._scheduler.busy():
            if record is not None and record.outcome is TaskOutcome.COMPLETED:
                self._ledger.consume()
                until_ms = self._recorded_wake(f"sleep {name!r}", record)
            else:
                await self._ledger.check_new_call(address)
                until_ms = await self._record_sleep(address, duration_ms)
            await self._sleep_until(name, until_ms)

    async def _record_sleep(self, address: TaskAddress, duration_ms: int) -> int:
        """Record the sleep's wake-up time: one write, before any waiting."""
        until_ms = self._clock.storage_now_ms() + duration_ms
        record: JSONValue = {"duration_ms": duration_ms, "until_ms": until_ms}
        # The history shows how long the sleep is.
        await self._record(address, record, duration_ms=duration_ms)
        return until_ms

    def _recorded_wake(self, what: str, record: TaskRecord) -> int:
        """The `until_ms` a record holds (a sleep's wake-up, an event wait's deadline)."""
        until = self._ledger.recorded_value(what, record).get("until_ms")
        if isinstance(until, int) and not isinstance(until, bool):
            return until
        raise self._ledger.bad_record(what, record)

    async def _sleep_until(self, name: str, until_ms: int) -> None:
        """Wait for a sleep's wake-up time: in place if it is near, else parked."""
        while True:
            remaining = until_ms - self._clock.storage_now_ms()
            if remaining <= 0:
                return
            if self._scheduler.suspending:  # the run suspends: wake it in time for this too
                self._scheduler.request_wait(WaitKind.SLEEP, until_ms, name)
                raise Suspended
            if remaining > self._config.max_inline_retry_delay_ms:
                await self._scheduler.park(WaitKind.SLEEP, until_ms, name)
                return
            if await self._scheduler.wait_inline(self._clock.worker_time_ms(until_ms)):
                return

    # --- events -----------------------------------------------------------------------------

    async def wait_for_event(self, name: str, timeout_ms: int | None) -> Any:
        if self._scheduler.suspending:
            raise Suspended
        task = EVENT_TASK_PREFIX + name
        index = self._ledger.next_address(task, EVENT_WAIT_KEY).index
        received = TaskAddress(task=task, digest=EVENT_RECEIVED_DIGEST, index=index)
        timed_out = TaskAddress(task=task, digest=EVENT_TIMEOUT_DIGEST, index=index)
        deadline = self._ledger.recorded(
            TaskAddress(task=task, digest=EVENT_DEADLINE_DIGEST, index=index)
        )
        if deadline is not None:
            self._ledger.consume()
        for address in (received, timed_out):
            record = self._ledger.recorded(address)
            if record is not None and record.outcome is TaskOutcome.COMPLETED:
                self._ledger.consume()
                value = self._ledger.recorded_value(f"event {name!r}", record)
                if address is timed_out:
                    raise _event_timeout(name, value.get("until_ms"))
                return value.get("data")
        async with self._scheduler.busy():
            if deadline is None:
                await self._ledger.check_new_call(received)
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
            event = await self._writes.next_event(name, after)
            if event is not None:
                data = loads(event.data_json)
                self._events_received[name] = max(after, event.seq)
                record: JSONValue = {"seq": event.seq, "data": data}
                await self._record(
                    TaskAddress(task=task, digest=EVENT_RECEIVED_DIGEST, index=index), record
                )
                return data
            if until_ms is None and timeout_ms is not None:
                until_ms = self._clock.storage_now_ms() + timeout_ms
                if timeout_ms > 0:
                    address = TaskAddress(task=task, digest=EVENT_DEADLINE_DIGEST, index=index)
                    await self._record(address, {"until_ms": until_ms})
            if until_ms is not None and self._clock.storage_now_ms() >= until_ms:
                address = TaskAddress(task=task, digest=EVENT_TIMEOUT_DIGEST, index=index)
                await self._record(address, {"until_ms": until_ms})
                raise _event_timeout(name, until_ms)
            # Parked until the deadline (then look once more) or until the run suspends.
            wake = NO_DEADLINE if until_ms is None else until_ms
            await self._scheduler.park(WaitKind.EVENT, wake, name)

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
        await self._writes.finish_task(end)


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
