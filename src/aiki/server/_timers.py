"""The server's runtime: one loop that fires due timers (retry backoffs, expired leases)."""

from __future__ import annotations

import asyncio
import logging

from aiki._core.clock import Clock
from aiki.server._service import Service
from aiki.server._signals import wait_any

_log = logging.getLogger("aiki.server.timers")

# Even when nothing is due, look again this often (storage clock): a lease set by a claim is
# not announced to this loop, so this bounds how late an expired lease is noticed.
_IDLE_MS = 1_000
_ERROR_BACKOFF_MS = 1_000


class TimerLoop:
    """Fires timers when they are due; one per server process.

    Several servers may run it on one database: each firing is a guarded update in storage,
    so a timer changes a run once however many loops see it.
    """

    def __init__(self, service: Service, clock: Clock) -> None:
        self._service = service
        self._clock = clock

    async def run(self) -> None:
        """Run until cancelled."""
        while True:
            ticket = self._service.timers_ticket()
            before = self._clock.now_ms()
            try:
                report = await self._service.fire_timers()
            except Exception:
                _log.exception("firing timers failed; trying again")
                await self._clock.sleep_ms(_ERROR_BACKOFF_MS)
                continue
            if report.woken or report.expired or report.ended:
                continue  # there may be more due than one pass takes
            # Due times are on the storage clock (the database's, for PostgreSQL); this loop
            # sleeps on its own. Measuring the wait on the storage clock and starting it from
            # this clock's reading before the pass keeps any offset between the two out, and
            # can only wake the loop early, never late.
            wait_ms = _IDLE_MS
            if report.next_due_ms is not None and report.now_ms is not None:
                wait_ms = min(wait_ms, report.next_due_ms - report.now_ms)
            wake_at = before + wait_ms
            if wake_at <= self._clock.now_ms():
                continue
            # An absolute deadline: the clock may move on before the sleeper task first runs.
            sleeper = asyncio.ensure_future(self._clock.sleep_until_ms(wake_at))
            try:
                await wait_any([sleeper, ticket], None)
            finally:
                sleeper.cancel()
