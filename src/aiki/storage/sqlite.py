"""`SqliteStorage`: the embedded storage, one SQLite file in WAL mode.

All database work happens on one dedicated thread with one connection (see
`_sqlite_writer`), so the event loop never blocks on SQLite, and concurrent calls are
committed in groups: one transaction, one commit, many operations. The `Storage` methods are
`SqliteOperations`' (`_sqlite_ops`); this module opens and closes the database.
"""

from __future__ import annotations

import asyncio
import sqlite3
from types import TracebackType

from aiki._core.clock import Clock
from aiki.errors import ConfigError
from aiki.storage._sql_files import load_migrations
from aiki.storage._sqlite_ops import SqliteOperations
from aiki.storage._sqlite_schema import SYNCHRONOUS_MODES, connect, migrate
from aiki.storage._sqlite_writer import SqliteWriter

__all__ = ["SqliteStorage"]


class SqliteStorage(SqliteOperations):
    """The `Storage` protocol on a SQLite database file (or `":memory:"`).

    Use it as an async context manager, or call `open()` and `close()`. Several processes may
    share one file: each write transaction takes SQLite's write lock, waiting up to
    `busy_timeout_ms` for it. A `":memory:"` database lives until `close()`.

    Args:
        path: the database file, created if missing, or `":memory:"`.
        clock: where times come from (`now_ms()` is called on the writer thread).
        max_batch: the most operations committed in one transaction.
        busy_timeout_ms: how long to wait for another process's write lock.
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Clock,
        max_batch: int = 256,
        busy_timeout_ms: int = 5_000,
        synchronous: str = "full",
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ConfigError(
                f"SQLite synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                f"got {synchronous!r}"
            )
        super().__init__(clock=clock)
        self._synchronous = synchronous
        self._path = path
        self._max_batch = max_batch
        self._busy_timeout_ms = busy_timeout_ms
        self._lifecycle = asyncio.Lock()  # open() and close() one at a time

    @property
    def path(self) -> str:
        """The database file (or `":memory:"`)."""
        return self._path

    def __repr__(self) -> str:
        return f"SqliteStorage({self._path!r})"

    async def __aenter__(self) -> SqliteStorage:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the database and apply pending migrations (a no-op if already open).

        Raises:
            StorageError: the database cannot be opened or migrated.
        """
        async with self._lifecycle:
            if self._writer is not None:
                return
            writer = SqliteWriter(
                self._connect, max_batch=self._max_batch, name=f"aiki-sqlite {self._path}"
            )
            await writer.start()
            self._writer = writer

    async def close(self) -> None:
        """Commit every queued operation, then close the database. It may be opened again."""
        async with self._lifecycle:
            writer, self._writer = self._writer, None
            if writer is not None:
                await writer.close()

    def _connect(self) -> sqlite3.Connection:
        conn = connect(
            self._path, busy_timeout_ms=self._busy_timeout_ms, synchronous=self._synchronous
        )
        try:
            migrate(conn, load_migrations("sqlite"), now_ms=self._clock.now_ms())
        except BaseException:
            conn.close()
            raise
        conn.row_factory = sqlite3.Row  # the operations read columns by name
        return conn
