"""The writes a run makes from inside its workflow's code: task starts and ends, events taken.

A lost lease, or a write that could not be made, stops the run on this worker for good,
whatever the workflow catches: its lease then expires and another worker (or this one)
resumes it from what storage holds.

A quick task's completed end is held, not awaited: the run's next write carries it. It is sent
when the run's next task call begins, before that task can act on it: the send goes out as
soon as the task first yields to the event loop, which it must do to touch anything outside
(a sync task runs in a thread). A task that ends without yielding even once (a quick
computation) did nothing meanwhile, so the send it let through has not begun: its end takes
the earlier ones back, and they wait together for the run's next write. The run's end
carries the ends held then (recorded in the same transaction); otherwise they are sent on
their own once the first has waited `_END_HOLD_S`. A run of quick tasks then waits for no
write but its end.

Writes that must come after held ends wait for their answers. What changes is only this: a
worker that dies with task ends held or on their way may have those tasks run again by the
next owner, as if it had died a moment before they returned. A recorded result is still
never run again, and a lost lease is still found before anything of the run is accepted:
every write is fenced by the lease's revision, and none goes after one that failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiki._core.api import EngineApi
from aiki._core.models import Lease, RunEvent, TaskEnd, TaskOutcome, TaskStart
from aiki._core.serde import check_size
from aiki.errors import LeaseLostError, PayloadError

T = TypeVar("T")

_log = logging.getLogger("aiki.worker")

# How long a completed task's end waits at most for the run's next write to carry it: as long
# as a task may run before its start is written on its own (see `aiki.worker._attempts`).
_END_HOLD_S = 0.05
# Held ends in one write at the most: a run of many quick tasks sends them in parts, each a
# request the server takes (its body limit is a few payloads, not many).
_MAX_HELD_ENDS = 64


class RunWrites:
    """One run's guarded writes to the server, made under its lease."""

    __slots__ = (
        "_api",
        "_cancel_requested",
        "_failed",
        "_held",
        "_held_bytes",
        "_held_since",
        "_hold_timer",
        "_last_send",
        "_lease",
        "_lease_lost",
        "_max_result_bytes",
        "_unbegun",
    )

    def __init__(
        self,
        *,
        api: EngineApi,
        lease: Lease,
        lease_lost: Callable[[], None],
        cancel_requested: Callable[[], None],
        max_result_bytes: int,
    ) -> None:
        self._api = api
        self._lease = lease
        self._lease_lost = lease_lost
        self._cancel_requested = cancel_requested
        self._max_result_bytes = max_result_bytes
        self._held: list[TaskEnd] = []
        self._held_bytes = 0  # of the held ends' results
        self._held_since = 0.0  # loop time the first of them was held
        self._hold_timer: asyncio.TimerHandle | None = None
        self._last_send: asyncio.Future[None] | None = None  # each send waits for the one before
        self._failed = False  # a write failed: nothing more goes
        self._unbegun: _Unbegun | None = None  # the last send, while it has not begun

    async def start_task(self, start: TaskStart) -> None:
        await self.write_held()
        await self._guard(self._api.start_task(self._lease, start))

    async def finish_task(self, end: TaskEnd) -> None:
        """Write a task attempt's end (or an engine record); the reply may ask to cancel."""
        await self.write_held()
        await self._finish_task(end)

    def hold_end(self, end: TaskEnd) -> bool:
        """Hold a completed task's end for the run's next write; False: write it now.

        An end whose result the server would refuse (over its size limit) is not held: its
        refusal must reach the task call, before the workflow has used the result.
        """
        assert end.outcome is TaskOutcome.COMPLETED
        size = len(end.result_json or "")
        try:
            check_size(end.result_json or "", what="task result", limit=self._max_result_bytes)
        except PayloadError:
            return False
        self._take_back()
        if self._held and (
            len(self._held) >= _MAX_HELD_ENDS or self._held_bytes + size > self._max_result_bytes
        ):
            self._send_now()  # this one would make the write too large: the others go first
        if not self._held:
            self._held_since = asyncio.get_running_loop().time()
        self._held.append(end)
        self._held_bytes += size
        self._arm_hold_timer()
        return True

    def send_held(self) -> None:
        """Send the held task ends as the run's next task call begins; answers not awaited.

        Until the event loop runs the send, a task end held next may take them back.
        """
        since = self._held_since
        ends = self._take()
        if ends:
            previous = self._last_send
            self._unbegun = _Unbegun(self._chain(ends), previous, ends, since)

    def _take_back(self) -> None:
        """Hold again the ends of the last send if it has not begun: nothing happened since."""
        unbegun, self._unbegun = self._unbegun, None
        if unbegun is None or unbegun.send.done():
            return
        unbegun.send.cancel()  # not begun: its coroutine never runs
        self._last_send = unbegun.previous
        self._held[:0] = unbegun.ends
        self._held_bytes += sum(len(end.result_json or "") for end in unbegun.ends)
        self._held_since = unbegun.since

    def _arm_hold_timer(self) -> None:
        if self._hold_timer is None:
            loop = asyncio.get_running_loop()
            due = self._held_since + _END_HOLD_S
            self._hold_timer = loop.call_at(due, self._write_held_late)

    async def write_held(self) -> None:
        """Write the held task ends, and wait for the answers of all sent before."""
        self._unbegun = None  # awaited here: it begins now
        ends = self._take()
        await (self._chain(ends) if ends else self._settled())

    async def take_held(self) -> tuple[TaskEnd, ...]:
        """The held task ends, for the run's end to carry, once those sent are answered.

        Raises:
            LeaseLostError: one of them failed; the run is left to its lease.
        """
        self._take_back()  # the run's end carries them instead
        ends = self._take()  # now: a late send must not take them while this waits
        await self._settled()
        return ends

    def drop_held(self) -> None:
        """The run leaves this worker without a word (lease lost, simulated crash)."""
        self._unbegun = None
        self._take()

    def _take(self) -> tuple[TaskEnd, ...]:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        ends = tuple(self._held)
        self._held.clear()
        self._held_bytes = 0
        return ends

    def _write_held_late(self) -> None:
        # Nothing carried them in time (a long computation between tasks, a long wait for a
        # slot): sent on their own, so that a crash now does not run those tasks again. Not
        # to be taken back: a run of quick tasks would put it off again and again.
        self._hold_timer = None
        self._send_now()

    def _send_now(self) -> None:
        """Send the held ends, not to be taken back."""
        ends = self._take()
        if ends:
            self._chain(ends)

    def _chain(self, ends: tuple[TaskEnd, ...]) -> asyncio.Future[None]:
        # Chained when sent, not when the send first runs: order is decided here and now.
        send = asyncio.ensure_future(self._write_after(self._last_send, ends))
        send.add_done_callback(_read_outcome)
        self._last_send = send
        return send

    async def _settled(self) -> None:
        """Once every send so far is answered; LeaseLostError if any write failed."""
        if self._last_send is not None:
            await asyncio.wait([self._last_send])
        if self._failed:
            raise LeaseLostError(self._lease.run_id, self._lease.revision)

    async def _write_after(
        self, previous: asyncio.Future[None] | None, ends: tuple[TaskEnd, ...]
    ) -> None:
        if self._unbegun is not None and self._unbegun.ends is ends:
            self._unbegun = None  # begun: these ends are on their way now
        if previous is not None:
            await asyncio.wait([previous])  # its failure is its own to report
        for end in ends:
            if self._failed:
                break
            try:
                await self._finish_task(end)
            except PayloadError:
                # Held because the server's limit allowed it: a server that changed its mind.
                # The workflow has used the result; let the next owner run the task again.
                _log.exception("run %s: a held task end was refused", self._lease.run_id)
                self._failed = True
                self._lease_lost()
        if self._failed:
            raise LeaseLostError(self._lease.run_id, self._lease.revision)

    async def _finish_task(self, end: TaskEnd) -> None:
        cancel_requested = await self._guard(self._api.finish_task(self._lease, end))
        if cancel_requested:
            self._cancel_requested()

    async def next_event(self, name: str, after_seq: int) -> RunEvent | None:
        return await self._guard(self._api.next_event(self._lease, name, after_seq))

    async def _guard(self, write: Awaitable[T]) -> T | None:
        try:
            return await write
        except LeaseLostError:
            self._failed = True
            self._lease_lost()
            raise
        except PayloadError:
            raise
        except Exception:
            _log.exception(
                "run %s: a write failed; leaving the run to lease recovery", self._lease.run_id
            )
            self._failed = True
            self._lease_lost()
            return None


@dataclass(frozen=True, slots=True)
class _Unbegun:
    """A send of held ends that the event loop has not run yet."""

    send: asyncio.Future[None]
    previous: asyncio.Future[None] | None  # the send it waits for
    ends: tuple[TaskEnd, ...]
    since: float  # loop time the first of them was held


def _read_outcome(send: asyncio.Future[None]) -> None:
    # A failed send has been dealt with (the run stops on this worker); reading its error
    # keeps asyncio from logging it a second time.
    if not send.cancelled():
        send.exception()
