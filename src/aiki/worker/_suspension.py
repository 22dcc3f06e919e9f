"""When a run leaves the worker: long waits park, and once only parked waits are left it suspends.

Short waits (sleeps, retry backoffs) happen in place. A long one parks: it waits in place
while other branches of the workflow (asyncio.gather) have work in flight, and once nothing
but parked waits is left, the run suspends until the earliest of them, freeing the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiki._core.ids import RunId
from aiki._core.models import WaitInfo, WaitKind
from aiki.worker._ledger import SETTLE_TURNS, Ledger
from aiki.worker._run_clock import RunClock

# A wait with no due time (an event without a timeout), among the parked waits' times.
NO_DEADLINE = 2**63 - 1


class Suspended(BaseException):
    """Unwinds the workflow when the run must wait off the worker (long retry backoff, sleep).

    A BaseException, so `except Exception` in workflow code does not swallow it.
    """


class SuspensionScheduler:
    """Tracks one run's operations in flight and decides when the run suspends, until when."""

    def __init__(self, *, run_id: RunId, clock: RunClock, ledger: Ledger) -> None:
        self._run_id = run_id
        self._clock = clock
        self._ledger = ledger
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake_at_ms: int | None = None
        self._wait_kind = WaitKind.RETRY
        self._wait_detail = ""
        self._event_wait: str | None = None  # an event waited for: a send must wake the run
        self._suspending = asyncio.Event()  # set with `_wake_at_ms`: wakes parked waits
        # Long waits (sleeps, retry backoffs) in progress, by id: (until_ms, kind, detail).
        self._parked: dict[int, tuple[int, WaitKind, str]] = {}
        self._park_ids = 0
        self._moves = 0  # moves whenever an operation in flight moves on
        self._decider: asyncio.Task[None] | None = None
        self._closed = False  # the run's code ended or is being stopped: it no longer suspends

    @property
    def suspending(self) -> bool:
        """Whether the run is to suspend: nothing new may start, parked waits unwind."""
        return self._wake_at_ms is not None

    def stop(self) -> None:
        """The worker stops the run's code from the outside: it may no longer suspend."""
        self._closed = True

    def end(self) -> None:
        """The workflow function is over: what is left of its branches decides nothing more."""
        self._closed = True
        if self._decider is not None:
            self._decider.cancel()

    def _progress(self) -> int:
        # Replay consuming a recorded result counts as progress, as an operation moving on does.
        return self._moves + self._ledger.consumed

    @contextlib.asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        """One operation of the workflow in flight: a task call or a sleep, never nested.

        A suspension waits until every operation in flight is parked (see `park`).
        """
        self._inflight += 1
        self._moves += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            self._moves += 1
            if self._inflight == 0:
                self._idle.set()
            self._consider_suspending()

    async def park(self, kind: WaitKind, until_ms: int, detail: str) -> None:
        """A long wait (a sleep, a retry backoff) by an operation in flight.

        It waits on this worker's clock while other branches of the workflow (asyncio.gather)
        still have work in flight: that work must not wait for this. Once every operation in
        flight is parked, the run suspends until the earliest parked time, freeing the worker,
        and this raises `Suspended`; if `until_ms` comes first, this returns.
        """
        self._park_ids += 1
        park_id = self._park_ids
        self._parked[park_id] = (until_ms, kind, detail)
        self._moves += 1
        try:
            self._consider_suspending()
            deadline = None if until_ms == NO_DEADLINE else self._clock.worker_time_ms(until_ms)
            if not await self.wait_inline(deadline):
                raise Suspended
        finally:
            del self._parked[park_id]
            self._moves += 1

    def _consider_suspending(self) -> None:
        """Start `_decide` if every operation in flight is parked."""
        if (
            self._decider is None
            and not self._closed
            and self._wake_at_ms is None
            and self._parked
            and self._inflight == len(self._parked)
        ):
            self._decider = asyncio.create_task(
                self._decide(), name=f"run {self._run_id} suspension check"
            )

    async def _decide(self) -> None:
        """Suspend the run if, for a few loop turns, nothing but parked waits is in flight.

        The turns let branches that are replaying, or between two calls, reach their next
        call: replayed calls finish without I/O, as in `Ledger._settle`.
        """
        try:
            quiet = 0
            seen = self._progress()
            while quiet < SETTLE_TURNS:
                await asyncio.sleep(0)
                if not self._parked or self._inflight > len(self._parked):
                    return  # work is in flight again: its end looks again
                quiet = quiet + 1 if self._progress() == seen else 0
                seen = self._progress()
            until_ms, kind, detail = min(self._parked.values())
            self.request_wait(kind, until_ms, detail)
            for _, parked_kind, parked_detail in self._parked.values():
                if parked_kind is WaitKind.EVENT:
                    self.request_wait(parked_kind, NO_DEADLINE, parked_detail)
        finally:
            self._decider = None

    def request_wait(self, kind: WaitKind, until_ms: int, detail: str) -> None:
        """Have the run wait off the worker until `until_ms` (storage clock), or earlier.

        Parked waits then raise `Suspended`, and so does any further call. The run wakes at
        the earliest time asked for; whatever is not due then waits again.
        """
        if self._wake_at_ms is None or until_ms < self._wake_at_ms:
            self._wake_at_ms = until_ms
            self._wait_kind = kind
            self._wait_detail = detail
        if kind is WaitKind.EVENT and self._event_wait is None:
            self._event_wait = detail
        self._suspending.set()

    async def wait_inline(self, deadline_ms: int | None) -> bool:
        """Wait on this worker's clock until `deadline_ms` (None: until the run suspends).

        False if the run is to suspend first: the caller then joins that suspension
        instead of holding it up.
        """
        sleeping = (
            self._suspending.wait()
            if deadline_ms is None
            else self._clock.worker.sleep_until_ms(deadline_ms)
        )
        sleeper = asyncio.create_task(sleeping, name=f"run {self._run_id} sleeping")
        suspending = asyncio.create_task(
            self._suspending.wait(), name=f"run {self._run_id} watching for a suspension"
        )
        try:
            await asyncio.wait((sleeper, suspending), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            suspending.cancel()
        return not self._suspending.is_set()

    async def wait(self) -> WaitInfo:
        """What the run waits for off the worker, once the operations in flight have unwound."""
        await self._idle.wait()  # let sibling attempts (asyncio.gather) record their results
        assert self._wake_at_ms is not None  # only a run that is suspending waits
        until_ms = None if self._wake_at_ms == NO_DEADLINE else self._wake_at_ms
        if self._event_wait is not None:
            # Whatever else is due first, an event must be able to wake the run.
            return WaitInfo(kind=WaitKind.EVENT, until_ms=until_ms, detail=self._event_wait)
        return WaitInfo(kind=self._wait_kind, until_ms=until_ms, detail=self._wait_detail)
