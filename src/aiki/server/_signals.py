"""In-process wake-ups: how long-polls learn that something changed, without polling.

A waiter takes a ticket *before* it looks at storage and awaits the ticket after, so a
notification that lands in between is never missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Signal:
    """A broadcast: `notify()` wakes every holder of a ticket taken before it."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def ticket(self) -> asyncio.Future[None]:
        if self._future is None or self._future.done():
            self._future = asyncio.get_running_loop().create_future()
        return self._future

    def notify(self) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)


class KeyedSignal(Generic[K]):
    """One `Signal` per key, kept only while someone holds a ticket for it."""

    __slots__ = ("_holders", "_signals")

    def __init__(self) -> None:
        self._signals: dict[K, Signal] = {}
        self._holders: dict[K, int] = {}

    def ticket(self, key: K) -> asyncio.Future[None]:
        signal = self._signals.get(key)
        if signal is None:
            signal = self._signals[key] = Signal()
        self._holders[key] = self._holders.get(key, 0) + 1
        return signal.ticket()

    def release(self, key: K) -> bool:
        """Give back a ticket; the key is forgotten when its last holder leaves.

        Returns:
            Whether others still hold tickets for the key.
        """
        left = self._holders.get(key, 0) - 1
        if left > 0:
            self._holders[key] = left
            return True
        self._holders.pop(key, None)
        self._signals.pop(key, None)
        return False

    def has_holders(self, key: K) -> bool:
        return key in self._holders

    def notify(self, key: K) -> None:
        signal = self._signals.get(key)
        if signal is not None:
            signal.notify()

    def notify_all(self) -> None:
        for signal in list(self._signals.values()):
            signal.notify()


class Shutdown:
    """Whether the server is shutting down, and a ticket for when it begins to."""

    __slots__ = ("_signal", "closed")

    def __init__(self) -> None:
        self._signal = Signal()
        self.closed = False

    def ticket(self) -> asyncio.Future[None]:
        return self._signal.ticket()

    def begin(self) -> None:
        self.closed = True
        self._signal.notify()

    def undo(self) -> None:
        """The server starts again."""
        self.closed = False


async def wait_any(futures: list[asyncio.Future[None]], timeout_s: float | None) -> None:
    """Return when one of `futures` is done or `timeout_s` (None: no limit) has passed.

    The futures are left as they are: tickets are shared by many waiters.
    """
    if timeout_s is not None and timeout_s <= 0:
        return
    await asyncio.wait(futures, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
