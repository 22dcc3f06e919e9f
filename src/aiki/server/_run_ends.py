"""What a server knows of runs' ends, and the waits for them (`Service.wait_any`).

A wait takes its tickets first and then looks, so an end between the two is not missed. It
need not look in storage when the run's final status is here already (it ended here lately),
or when this server made the run and has not heard of its end since: every end, here or on
another server, is news here when the queue hears every end (`Queue.hears_every_end`), and
news that may have been dropped clears that knowledge.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiki._core.ids import RunId
from aiki._core.models import RunsEnded, RunStatus
from aiki.queue import Announcement
from aiki.server._signals import KeyedSignal, Shutdown, wait_any

# While a long-poll waits, storage is read again this often even without a wake-up, so a
# change made by another server process is seen even when the queue dropped the news.
WAIT_RECHECK_S = 5.0
# A wait for many runs, when one has ended, waits this long for others before it answers.
_WAIT_ANY_GATHER_S = 0.01
# How many recently ended (or made) runs are remembered (a final status is about 1 KiB).
_REMEMBERED_RUNS = 10_000

V = TypeVar("V")

ReadRuns = Callable[[Sequence[RunId]], Awaitable[list[RunStatus]]]


class RunEnds:
    """The ends of runs this server has seen or heard of, and the waits parked for them."""

    def __init__(self, read_runs: ReadRuns, shutdown: Shutdown, *, hears_every_end: bool) -> None:
        self._read_runs = read_runs
        self._shutdown = shutdown
        self._hears_every_end = hears_every_end
        self._ended: KeyedSignal[RunId] = KeyedSignal()
        # The final status of a run that ended on this server, kept while clients wait for
        # it: they need not read it back from storage.
        self._final: dict[RunId, RunStatus] = {}
        # The final status of the runs that ended here most recently, oldest first: a client
        # awaiting many handles of finished runs gets each without a storage read. A final
        # status never changes; an operation that ever takes a run out of a final state must
        # drop it from here (and tell the other servers).
        self._recent_final: OrderedDict[RunId, RunStatus] = OrderedDict()
        # Runs made here whose end this server has not heard of. `_ends_heard` counts ends
        # heard: one heard while a run was being made may be that run's.
        self._unended: OrderedDict[RunId, None] = OrderedDict()
        self._ends_heard = 0
        self.parked = 0  # waits parked now, one per run waited for

    def mark(self) -> int:
        """Taken before a run is made; `made` then knows whether an end was heard meanwhile."""
        return self._ends_heard

    def made(self, run_id: RunId, mark: int) -> None:
        """The run `run_id` was made here (`mark` taken before): its end will be news here."""
        if self._hears_every_end and self._ends_heard == mark:
            _remember(self._unended, run_id, None)

    def ended_here(self, status: RunStatus) -> None:
        """A run ended on this server with `status` (announce it after)."""
        if self._ended.has_holders(status.id):
            self._final[status.id] = status
        _remember(self._recent_final, status.id, status)

    def heard(self, news: Announcement) -> None:
        """Wake the waits for the runs that `news` says ended, or all if news was missed."""
        for run_id in news.ended:
            self._unended.pop(run_id, None)
            self._ended.notify(run_id)
        self._ends_heard += len(news.ended)
        if news.missed:
            self._unended.clear()
            self._ends_heard += 1
            self._ended.notify_all()

    async def wait_any(self, run_ids: Sequence[RunId], timeout_s: float) -> RunsEnded:
        """The runs of `run_ids` that have ended, once one has, or none after `timeout_s`."""
        ids = list(dict.fromkeys(run_ids))
        recent = [status for run_id in ids if (status := self._recent_final.get(run_id))]
        if recent:
            return RunsEnded(ended=tuple(recent))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        tickets = [self._ended.ticket(run_id) for run_id in ids]
        unended = all(run_id in self._unended for run_id in ids)
        try:
            while True:
                remaining = deadline - loop.time()
                if not unended or remaining <= 0 or self._shutdown.closed:
                    found = {status.id: status for status in await self._read_runs(ids)}
                    missing = tuple(run_id for run_id in ids if run_id not in found)
                    ended = tuple(status for status in found.values() if status.state.is_final)
                    remaining = deadline - loop.time()
                    if ended or missing or remaining <= 0 or self._shutdown.closed:
                        return RunsEnded(ended=ended, missing=missing)
                unended = False  # after a wake-up without an end: read
                self.parked += len(ids)
                try:
                    await wait_any(
                        [*tickets, self._shutdown.ticket()], min(remaining, WAIT_RECHECK_S)
                    )
                finally:
                    self.parked -= len(ids)
                told = self._told(ids)
                if told and len(told) < len(ids):
                    # More of them may end in the next moments (under load, many at a time):
                    # they go in this answer, rather than each in an answer of its own, after
                    # which the client asks again for all the rest.
                    await asyncio.sleep(_WAIT_ANY_GATHER_S)
                    told = self._told(ids)
                if told:
                    return RunsEnded(ended=told)
                # Woken by a missed-news notice, the recheck time or the closing: read again.
                tickets = [self._ended.ticket(run_id) for run_id in ids]
                for run_id in ids:
                    self._ended.release(run_id)  # the new tickets hold each run once more
        finally:
            for run_id in ids:
                if not self._ended.release(run_id):
                    self._final.pop(run_id, None)

    def _told(self, ids: Sequence[RunId]) -> tuple[RunStatus, ...]:
        return tuple(final for run_id in ids if (final := self._final.get(run_id)))


def _remember(remembered: OrderedDict[RunId, V], run_id: RunId, value: V) -> None:
    remembered[run_id] = value
    if len(remembered) > _REMEMBERED_RUNS:
        remembered.popitem(last=False)
