"""Waits on many runs from one client, shared: one long-poll request for all that wait.

An application awaiting a thousand handles at once (`asyncio.gather`) would otherwise hold a
thousand requests open, each with its own connection. Here the waits that begin together go
in one `wait_any` request; when it answers, the runs that ended are settled and the rest wait
again, with any that began meanwhile. A wait that begins while a request is out starts one of
its own (with every other newcomer), so it is never held up by an older request's long-poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from aiki._core.ids import RunId
from aiki._core.models import RunsEnded, RunStatus
from aiki.errors import RunNotFoundError

WaitAny = Callable[[Sequence[RunId], float], Awaitable[RunsEnded]]


class _Waiter:
    __slots__ = ("deadline", "future", "run_id")

    def __init__(self, run_id: RunId, deadline: float | None) -> None:
        self.run_id = run_id
        self.deadline = deadline  # loop time; None: no limit
        self.future: asyncio.Future[RunStatus | None] = asyncio.get_running_loop().create_future()


class SharedWaits:
    """Coalesces `wait(run_id, timeout)` calls into `wait_any` requests."""

    def __init__(self, wait_any: WaitAny, *, cap_s: float, max_runs: int) -> None:
        self._wait_any = wait_any
        self._cap_s = cap_s
        self._max_runs = max_runs
        self._new: list[_Waiter] = []
        self._starting = False
        self._requests: set[asyncio.Task[None]] = set()

    async def wait(self, run_id: RunId, timeout_s: float | None) -> RunStatus | None:
        """The run's final status, or None if it had not ended by the timeout.

        Raises:
            RunNotFoundError: no run has this id.
        """
        loop = asyncio.get_running_loop()
        waiter = _Waiter(run_id, None if timeout_s is None else loop.time() + timeout_s)
        self._join([waiter])
        try:
            return await waiter.future
        finally:
            waiter.future.cancel()  # a caller that gives up is dropped at the next answer

    async def aclose(self) -> None:
        for request in list(self._requests):
            request.cancel()
        await asyncio.gather(*self._requests, return_exceptions=True)
        for waiter in self._new:
            waiter.future.cancel()
        self._new.clear()

    def _join(self, waiters: list[_Waiter]) -> None:
        self._new.extend(waiters)
        if not self._starting:
            # At the end of this turn of the loop: the waits begun in it go together.
            self._starting = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._starting = False
        waiting = [w for w in self._new if not w.future.done()]
        self._new.clear()
        for low in range(0, len(waiting), self._max_runs):
            request = asyncio.ensure_future(self._request(waiting[low : low + self._max_runs]))
            self._requests.add(request)
            request.add_done_callback(self._requests.discard)

    async def _request(self, waiters: list[_Waiter]) -> None:
        loop = asyncio.get_running_loop()
        deadlines = [w.deadline for w in waiters if w.deadline is not None]
        step = self._cap_s if not deadlines else min(self._cap_s, min(deadlines) - loop.time())
        try:
            answer = await self._wait_any([w.run_id for w in waiters], max(step, 0.0))
        except Exception as exc:
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
            return
        ended = {status.id: status for status in answer.ended}
        missing = set(answer.missing)
        again: list[_Waiter] = []
        now = loop.time()
        for waiter in waiters:
            if waiter.future.done():
                continue
            if waiter.run_id in ended:
                waiter.future.set_result(ended[waiter.run_id])
            elif waiter.run_id in missing:
                waiter.future.set_exception(RunNotFoundError(waiter.run_id))
            elif waiter.deadline is not None and now >= waiter.deadline:
                waiter.future.set_result(None)
            else:
                again.append(waiter)
        if again:
            self._join(again)
