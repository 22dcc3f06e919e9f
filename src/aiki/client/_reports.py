"""A worker's leased writes, gathered into one request while another is on its way.

Embedded, many runs' writes share a storage transaction; over HTTP they should share a request
too, or every task end costs a round trip of its own on both sides. Writes are sent at once
when nothing is in flight (an idle worker adds no latency); those made while a batch is in
flight go together in the next one, so the batch grows with the load by itself, with no timer
to tune. Each write gets its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiki._http.bodies import Report, ReportAnswer

Send = Callable[[tuple[Report, ...]], Awaitable[tuple[ReportAnswer, ...]]]

# Reports in one request at the most; more wait for the next.
MAX_BATCH = 256


class ReportBatcher:
    """Sends reports through `send`, one request at a time, as many per request as wait."""

    def __init__(self, send: Send, *, max_batch: int = MAX_BATCH) -> None:
        self._send = send
        self._max_batch = max_batch
        self._waiting: list[tuple[Report, asyncio.Future[ReportAnswer]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def submit(self, report: Report) -> ReportAnswer:
        """Send `report` with whatever else is waiting, and return its answer.

        Raises:
            Exception: the request failed; every report of that request gets its error.
        """
        answer: asyncio.Future[ReportAnswer] = asyncio.get_running_loop().create_future()
        self._waiting.append((report, answer))
        if self._sender is None:
            # Started, not run: the writes made in this same turn of the loop go with it.
            self._sender = asyncio.create_task(self._send_waiting(), name="aiki reports")
        # A caller that gives up still has its report sent: the writes are idempotent, and the
        # others in its batch need their answers.
        return await asyncio.shield(answer)

    async def aclose(self) -> None:
        """Stop sending; reports still waiting fail with `CancelledError`."""
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        for _, answer in self._waiting:
            answer.cancel()
        self._waiting.clear()

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                try:
                    answers = await self._send(tuple(report for report, _ in batch))
                except asyncio.CancelledError:
                    for _, answer in batch:
                        answer.cancel()
                    raise
                except Exception as exc:
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for (_, answer), reply in zip(batch, answers, strict=True):
                    if not answer.done():
                        answer.set_result(reply)
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None
