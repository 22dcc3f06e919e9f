"""Helpers for end-to-end tests."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiki


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 5.0) -> None:
    """Wait until `check()` is true; fail after `timeout` seconds.

    For conditions nothing signals (a state seen only through storage); everything that can be
    signalled (a task starting) uses an asyncio.Event instead.
    """
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.005)


async def until(check: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """`eventually()` for a condition this process can look at for free, such as a counter the
    server keeps for tests (`Service.parked_polls`)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


async def state_is(handle: aiki.RunHandle[object], state: aiki.RunState) -> None:
    async def check() -> bool:
        return (await handle.get_status()).state is state

    await eventually(check)


class Calls:
    """Counts side effects of tasks by name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, name: str) -> int:
        self.counts[name] += 1
        return self.counts[name]

    def __getitem__(self, name: str) -> int:
        return self.counts[name]


async def tasks_recorded(handle: aiki.RunHandle[Any], tasks: int) -> None:
    """Until `tasks` task ends of the run are in storage.

    A quick task's end goes with the run's next write, or on its own a moment after the task
    returned (`aiki.worker._writes`); a crash before that runs the task again. A test that
    crashes a run to see what replay does with recorded results waits for them first.
    """

    async def recorded() -> bool:
        history = await handle.get_history()
        return sum(e.kind.value == "task_completed" for e in history) >= tasks

    await eventually(recorded)


class StorageCalls:
    """Counts the calls of some of a storage's methods, passing them through, with their args."""

    def __init__(self, storage: Any, *methods: str) -> None:
        self.counts: Counter[str] = Counter()
        self.args: dict[str, list[tuple[Any, ...]]] = {method: [] for method in methods}
        for method in methods:
            original = getattr(storage, method)

            async def counted(*args: Any, _method: str = method, _original: Any = original) -> Any:
                self.counts[_method] += 1
                self.args[_method].append(args)
                return await _original(*args)

            setattr(storage, method, counted)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
