"""Time for the engine: the system clock in production, a fake one in tests.

Engine code never calls `time.time()` or `asyncio.sleep()` for due times; it asks a `Clock`.
Times are integer milliseconds since the Unix epoch.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Where the engine gets the time from."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...

    async def sleep_ms(self, duration_ms: int) -> None:
        """Wait `duration_ms` of this clock's time."""
        ...

    async def sleep_until_ms(self, deadline_ms: int) -> None:
        """Wait until this clock reads `deadline_ms`.

        Prefer it to `sleep_ms` when the wait starts in a new task: the deadline is fixed by
        the caller, however late the task first runs.
        """
        ...


class SystemClock:
    """The real clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep_ms(self, duration_ms: int) -> None:
        await asyncio.sleep(max(duration_ms, 0) / 1000)

    async def sleep_until_ms(self, deadline_ms: int) -> None:
        await self.sleep_ms(deadline_ms - self.now_ms())


class FakeClock:
    """A clock that moves only when told, so tests of timeouts and leases need no sleeps.

    `now_ms()` is safe to call from any thread (the SQLite writer reads it); `advance()` must be
    called from the event loop that owns the sleepers.
    """

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:  # 2026-01-01T00:00Z
        self._now = start_ms
        self._lock = threading.Lock()
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now_ms(self) -> int:
        with self._lock:
            return self._now

    async def sleep_ms(self, duration_ms: int) -> None:
        await self.sleep_until_ms(self.now_ms() + duration_ms)

    async def sleep_until_ms(self, deadline_ms: int) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if deadline_ms <= self._now:
                future.set_result(None)
            else:
                heapq.heappush(self._sleepers, (deadline_ms, next(self._order), future))
        await future

    async def advance(self, duration_ms: int) -> None:
        """Move time forward and let every sleeper that is now due run."""
        if duration_ms < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now += duration_ms
            due: list[asyncio.Future[None]] = []
            while self._sleepers and self._sleepers[0][0] <= self._now:
                due.append(heapq.heappop(self._sleepers)[2])
        for future in due:
            if not future.done():
                future.set_result(None)
        await asyncio.sleep(0)  # give the woken sleepers their first step


def to_datetime(ms: int) -> datetime:
    """An aware UTC datetime for a millisecond timestamp."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
