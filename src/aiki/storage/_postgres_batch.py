"""`WriteBatcher`: concurrent PostgreSQL writes of one kind, sent as one statement."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable, Sequence
from typing import Any

import asyncpg

from aiki.storage._postgres_schema import Pool, Query


class _Write:
    __slots__ = ("future", "key", "values")

    def __init__(self, key: Hashable, values: Sequence[Any], future: asyncio.Future[Any]) -> None:
        self.key = key
        self.values = values
        self.future = future


def _settle(write: _Write, exc: Exception) -> None:
    if not write.future.done():
        write.future.set_exception(exc)


class WriteBatcher:
    """Runs concurrent writes of one kind together: one statement and one commit for many.

    A write is a row of values; the statement takes each column as an array, one element per
    write, and returns a row (whose column `n` is the write's position, from 1) for each
    write it reports on. A write is sent at once while fewer than `max_flushes` statements of
    its kind are in flight (from its caller's task, when nothing else waits); otherwise it goes
    with the next, together with every write queued meanwhile (up to `max_batch`). Alone, a
    write costs one statement as before; under load, many share a round trip and a commit.

    Two writes with one key (the run they change) never share a statement, nor run in two at
    once: the second goes after the first has committed, as it would from one connection.
    When a statement of several writes fails in PostgreSQL (bad data in one of them), each is
    run again alone, so that a write fails only for its own sake.
    """

    def __init__(
        self,
        query: Query,
        columns: Sequence[str],
        *,
        max_batch: int = 64,
        max_flushes: int = 2,
    ) -> None:
        self._query = query
        self._columns = tuple(columns)
        self._max_batch = max_batch
        self._max_flushes = max_flushes
        self._queue: deque[_Write] = deque()
        self._busy: set[Hashable] = set()  # keys in a statement in flight
        self._flushes: set[asyncio.Task[None]] = set()  # statements sent by a task of their own
        self._inline = 0  # statements sent from their only write's caller

    async def write(self, db: Pool, key: Hashable, values: Sequence[Any]) -> asyncpg.Record | None:
        """Run one write (its values in the order of `columns`); its row, or None if none came.

        A caller cancelled before its write was sent cancels the write; once sent, it runs
        unless it went alone from the caller's task: then the statement is cancelled with it.
        """
        future: asyncio.Future[asyncpg.Record | None] = asyncio.get_running_loop().create_future()
        write = _Write(key, values, future)
        if not self._queue and key not in self._busy and self._in_flight() < self._max_flushes:
            # Nothing waits and a statement may go: this task sends it, sparing the hand-over
            # to another (what a write alone costs is then what it did without batches).
            self._busy.add(key)
            self._inline += 1
            try:
                await self._flush(db, [write])
            finally:
                self._inline -= 1
                self._flush_more(db)
            return future.result()
        self._queue.append(write)
        self._flush_more(db)
        return await future

    async def drain(self) -> None:
        """Wait until every write handed in has run."""
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    def _in_flight(self) -> int:
        return len(self._flushes) + self._inline

    def _flush_more(self, db: Pool) -> None:
        while self._queue and self._in_flight() < self._max_flushes:
            batch = self._take()
            if not batch:
                return
            flush = asyncio.create_task(self._flush_task(db, batch), name="aiki postgres writes")
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    async def _flush_task(self, db: Pool, batch: list[_Write]) -> None:
        try:
            await self._flush(db, batch)
        finally:
            # Out of the count before looking for more: the done callback comes too late.
            self._flushes.discard(asyncio.current_task())
            self._flush_more(db)

    def _take(self) -> list[_Write]:
        """The next writes to send, oldest first, at most one per key and none of a busy key."""
        batch: list[_Write] = []
        waiting: list[_Write] = []
        while self._queue and len(batch) < self._max_batch:
            write = self._queue.popleft()
            if write.future.done():
                continue  # its caller was cancelled before it was sent
            if write.key in self._busy:
                waiting.append(write)
                continue
            self._busy.add(write.key)
            batch.append(write)
        self._queue.extendleft(reversed(waiting))
        return batch

    async def _flush(self, db: Pool, batch: list[_Write]) -> None:
        try:
            try:
                await self._run(db, batch)
            except asyncpg.PostgresError:
                if len(batch) == 1:
                    raise
                for write in batch:  # each alone: one write's bad data fails only that write
                    try:
                        await self._run(db, [write])
                    except Exception as exc:
                        _settle(write, exc)
        except Exception as exc:
            for write in batch:
                _settle(write, exc)
        except BaseException:
            for write in batch:
                write.future.cancel()
            raise
        finally:
            self._busy.difference_update(write.key for write in batch)

    async def _run(self, db: Pool, batch: list[_Write]) -> None:
        rows = await self._execute(db, batch)
        for position, write in enumerate(batch, 1):
            if not write.future.done():
                write.future.set_result(rows.get(position))

    async def _execute(self, db: Pool, batch: list[_Write]) -> dict[int, asyncpg.Record]:
        params = {
            name: [write.values[column] for write in batch]
            for column, name in enumerate(self._columns)
        }
        rows = await db.fetch(self._query.sql, *self._query.args(params))
        return {row["n"]: row for row in rows}
