"""A run's writes, each tried again a few times after a storage error.

Storage applies a repeated worker write once (a task end already recorded for its attempt, a
run already moved to the state asked for), so a write whose database connection dropped can
simply be sent again. Without this, a dropped connection cost the run its worker: the run
waited out its lease and its interrupted task ran again. Over HTTP the client already repeats
such writes; this covers a worker in the server's process, and a storage error that outlasts
the client's own tries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiki._core.api import EngineApi
from aiki._core.models import Lease, RunEvent, RunOutcome, TaskEnd, TaskStart, WaitInfo
from aiki.errors import StorageError

T = TypeVar("T")

_log = logging.getLogger("aiki.worker")

# Real time, not the engine's clock: a test's fake clock must not hold a retry forever.
_BACKOFF_S = (0.05, 0.25)


class RetryingWrites:
    """The writes a `RunExecution` makes (and its one read), retried after `StorageError`."""

    def __init__(self, api: EngineApi) -> None:
        self._api = api

    async def start_task(self, lease: Lease, start: TaskStart) -> None:
        await self._retry(lease, lambda: self._api.start_task(lease, start))

    async def finish_task(self, lease: Lease, end: TaskEnd) -> bool:
        return await self._retry(lease, lambda: self._api.finish_task(lease, end))

    async def suspend(self, lease: Lease, wait: WaitInfo) -> None:
        await self._retry(lease, lambda: self._api.suspend(lease, wait))

    async def next_event(self, lease: Lease, name: str, after_seq: int) -> RunEvent | None:
        return await self._retry(lease, lambda: self._api.next_event(lease, name, after_seq))

    async def release(self, lease: Lease) -> None:
        await self._retry(lease, lambda: self._api.release(lease))

    async def finish(self, lease: Lease, outcome: RunOutcome) -> None:
        await self._retry(lease, lambda: self._api.finish(lease, outcome))

    async def _retry(self, lease: Lease, write: Callable[[], Awaitable[T]]) -> T:
        for delay in _BACKOFF_S:
            try:
                return await write()
            except StorageError as exc:
                _log.warning("run %s: storage error (%s); writing again", lease.run_id, exc)
            await asyncio.sleep(delay)
        return await write()
