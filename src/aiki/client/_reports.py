"""A worker's leased writes, gathered into one request while another is on its way.

Embedded, many runs' writes share a storage transaction; over HTTP they should share a request
too, or every task end costs a round trip of its own on both sides. Writes are sent at once
when nothing is in flight (an idle worker adds no latency); those made while a batch is in
flight go together in the next one, so the batch grows with the load by itself, with no timer
to tune. Each write gets its own answer. A batch also stays within about one payload's worth
of results (the server's limit on a request's body is a few payloads, not many).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiki._http.bodies import Report, ReportAnswer

Send = Callable[[tuple[Report, ...]], Awaitable[tuple[ReportAnswer, ...]]]

# Reports in one request at the most; more wait for the next.
MAX_BATCH = 256
# Bytes of results and errors in one request, until the server's own limit on one payload is
# known (from a worker's poll reply): its default.
DEFAULT_MAX_BYTES = 1024 * 1024


class ReportBatcher:
    """Sends reports through `send`, one request at a time, as many per request as wait."""

    def __init__(
        self, send: Send, *, max_batch: int = MAX_BATCH, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self.max_bytes = max_bytes  # of payload text in one request; the first report goes anyway
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
                batch = self._next_batch()
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

    def _next_batch(self) -> list[tuple[Report, asyncio.Future[ReportAnswer]]]:
        """The reports of the next request, oldest first: as many as fit, one at least."""
        size, count = 0, 0
        for report, _ in self._waiting[: self._max_batch]:
            size += report_bytes(report)
            if count and size > self.max_bytes:
                break
            count += 1
        batch = self._waiting[:count]
        del self._waiting[:count]
        return batch


def report_bytes(report: Report) -> int:
    """The payload text a report carries: what can make a request large."""
    texts: list[str | None] = []
    if report.finish_task is not None:
        texts.append(report.finish_task.result_json)
    if report.finish is not None:
        texts.append(report.finish.result_json)
        texts.extend(end.result_json for end in report.finish.task_ends)
    return sum(len(text) for text in texts if text)
