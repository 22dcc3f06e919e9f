"""The SQLite writer: one thread owns the connection and commits queued operations in groups.

Callers on an event loop queue an operation (a plain function of the connection) with a future.
The thread takes everything queued, up to `max_batch`, and runs the batch in one transaction,
each write inside its own SAVEPOINT: an operation that raises is rolled back alone and its
exception goes to its own caller. One COMMIT then makes the whole batch durable, and one
`call_soon_threadsafe` per batch hands every outcome back to the loop. Under load a batch
holds many operations, so the per-transaction cost is shared; when idle a batch holds one.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from aiki.errors import StorageError

T = TypeVar("T")

Operation = Callable[[sqlite3.Connection], T]

# (future, succeeded, result or exception)
_Outcome = tuple["asyncio.Future[Any]", bool, Any]


class _Request:
    __slots__ = ("future", "loop", "op", "write")

    def __init__(
        self,
        op: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        write: bool,
    ) -> None:
        self.op = op
        self.future = future
        self.loop = loop
        self.write = write


class _Stop:
    __slots__ = ("future", "loop")

    def __init__(self, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.future = future
        self.loop = loop


def wrap_error(exc: BaseException) -> BaseException:
    """A driver error becomes `StorageError` (with the driver's as its cause); others pass."""
    if isinstance(exc, sqlite3.Error):
        error = StorageError(f"SQLite: {exc}")
        error.__cause__ = exc
        return error
    return exc


def _settle(outcomes: list[_Outcome]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller was cancelled; the write happened all the same
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _deliver(outcomes: list[tuple[asyncio.AbstractEventLoop, _Outcome]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for loop, outcome in outcomes:
        by_loop.setdefault(loop, []).append(outcome)
    for loop, settled in by_loop.items():
        # A closed loop has nobody waiting for these any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, settled)


class SqliteWriter:
    """One connection on one thread; `run()` queues an operation and awaits its outcome."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        max_batch: int = 256,
        name: str = "aiki-sqlite-writer",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._connect = connect
        self._max_batch = max_batch
        self._name = name
        self._queue: queue.SimpleQueue[_Request | _Stop] = queue.SimpleQueue()
        # Guards `_accepting` against the thread stopping between a caller's check and its put.
        self._lock = threading.Lock()
        self._accepting = False
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Start the thread; it connects (and migrates) before taking any operation.

        Raises:
            StorageError: the database could not be opened.
        """
        if self._thread is not None:
            raise RuntimeError("this writer was already started")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Any] = loop.create_future()
        self._thread = threading.Thread(
            target=self._main, args=(loop, ready), name=self._name, daemon=True
        )
        self._thread.start()
        await ready

    async def run(self, op: Operation[T], *, write: bool = True) -> T:
        """Run `op` in the writer's next transaction and return what it returns.

        A write runs inside a SAVEPOINT: if it raises, its changes are rolled back and the
        exception is raised here, while the rest of its batch commits. If the caller is
        cancelled, the operation still runs.

        Raises:
            StorageError: the database failed, or the writer is not running.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if not self._accepting:
                raise StorageError("the SQLite storage is not open")
            self._queue.put(_Request(op, future, loop, write))
        return await future

    async def close(self) -> None:
        """Run every queued operation, then close the connection and end the thread."""
        if self._thread is None:
            return
        if self._stopped is None:
            loop = asyncio.get_running_loop()
            self._stopped = loop.create_future()
            with self._lock:
                if self._accepting:
                    self._accepting = False
                    self._queue.put(_Stop(self._stopped, loop))
                elif not self._stopped.done():
                    self._stopped.set_result(None)
        await asyncio.shield(self._stopped)
        # The thread settles `_stopped` as its very last step, so this join returns at once.
        self._thread.join()

    # --- the writer thread ---------------------------------------------------------------------

    def _main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[Any]) -> None:
        try:
            conn = self._connect()
        except Exception as exc:
            error = StorageError(f"cannot open the SQLite database: {exc}")
            error.__cause__ = exc
            _deliver([(loop, (ready, False, error))])
            return
        with self._lock:
            self._accepting = True
        _deliver([(loop, (ready, True, None))])
        stop: _Stop | None = None
        try:
            while stop is None:
                batch, stop = self._take()
                if batch:
                    _deliver(
                        [
                            (r.loop, outcome)
                            for r, outcome in zip(batch, self._run(conn, batch), strict=True)
                        ]
                    )
        finally:
            with self._lock:
                self._accepting = False
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            self._fail_leftovers()
            if stop is not None:
                _deliver([(stop.loop, (stop.future, True, None))])

    def _take(self) -> tuple[list[_Request], _Stop | None]:
        items = [self._queue.get()]
        while len(items) < self._max_batch:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        batch: list[_Request] = []
        for index, item in enumerate(items):
            if isinstance(item, _Stop):
                # Nothing is queued after the stop while `_accepting` is false; be safe anyway.
                for late in items[index + 1 :]:
                    self._queue.put(late)
                return batch, item
            batch.append(item)
        return batch, None

    def _run(self, conn: sqlite3.Connection, batch: list[_Request]) -> list[_Outcome]:
        try:
            return self._transaction(conn, batch)
        # The transaction itself failed: nothing in it was committed. BaseException too, so
        # that no caller waits forever on a batch the thread gave up.
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = wrap_error(exc)
            if not isinstance(error, StorageError):
                error = StorageError(f"SQLite transaction failed: {exc!r}")
                error.__cause__ = exc
            return [(r.future, False, error) for r in batch]

    def _transaction(self, conn: sqlite3.Connection, batch: list[_Request]) -> list[_Outcome]:
        # IMMEDIATE takes the write lock up front, so no operation meets SQLITE_BUSY halfway.
        conn.execute("BEGIN IMMEDIATE" if any(r.write for r in batch) else "BEGIN")
        outcomes: list[_Outcome] = []
        for request in batch:
            outcomes.append(self._apply(conn, request))
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back (disk full, I/O error): the
                # operations before this one were lost too.
                raise StorageError("SQLite rolled back the transaction")
        conn.execute("COMMIT")
        return outcomes

    @staticmethod
    def _apply(conn: sqlite3.Connection, request: _Request) -> _Outcome:
        if not request.write:
            try:
                return (request.future, True, request.op(conn))
            except Exception as exc:
                return (request.future, False, wrap_error(exc))
        conn.execute("SAVEPOINT op")
        try:
            value = request.op(conn)
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            return (request.future, False, wrap_error(exc))
        conn.execute("RELEASE op")
        return (request.future, True, value)

    def _fail_leftovers(self) -> None:
        leftovers: list[tuple[asyncio.AbstractEventLoop, _Outcome]] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Stop):
                leftovers.append((item.loop, (item.future, True, None)))
            else:
                error = StorageError("the SQLite storage was closed before this operation ran")
                leftovers.append((item.loop, (item.future, False, error)))
        _deliver(leftovers)
