"""The writes a run makes from inside its workflow's code: task starts and ends, events taken.

A lost lease, or a write that could not be made, stops the run on this worker for good,
whatever the workflow catches: its lease then expires and another worker (or this one)
resumes it from what storage holds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiki._core.api import EngineApi
from aiki._core.models import Lease, RunEvent, TaskEnd, TaskStart
from aiki.errors import LeaseLostError, PayloadError

T = TypeVar("T")

_log = logging.getLogger("aiki.worker")


class RunWrites:
    """One run's guarded writes to the server, made under its lease."""

    __slots__ = ("_api", "_cancel_requested", "_lease", "_lease_lost")

    def __init__(
        self,
        *,
        api: EngineApi,
        lease: Lease,
        lease_lost: Callable[[], None],
        cancel_requested: Callable[[], None],
    ) -> None:
        self._api = api
        self._lease = lease
        self._lease_lost = lease_lost
        self._cancel_requested = cancel_requested

    async def start_task(self, start: TaskStart) -> None:
        await self._guard(self._api.start_task(self._lease, start))

    async def finish_task(self, end: TaskEnd) -> None:
        """Write a task attempt's end (or an engine record); the reply may ask to cancel."""
        cancel_requested = await self._guard(self._api.finish_task(self._lease, end))
        if cancel_requested:
            self._cancel_requested()

    async def next_event(self, name: str, after_seq: int) -> RunEvent | None:
        return await self._guard(self._api.next_event(self._lease, name, after_seq))

    async def _guard(self, write: Awaitable[T]) -> T | None:
        try:
            return await write
        except LeaseLostError:
            self._lease_lost()
            raise
        except PayloadError:
            raise
        except Exception:
            _log.exception(
                "run %s: a write failed; leaving the run to lease recovery", self._lease.run_id
            )
            self._lease_lost()
            return None
