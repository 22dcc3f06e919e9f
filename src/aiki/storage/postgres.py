"""`PostgresStorage`: the production storage, PostgreSQL through an asyncpg connection pool.

Several servers may share one database: migrations are applied under an advisory lock, claims
take rows with `FOR UPDATE SKIP LOCKED`, and every due time is read from the database clock,
so servers on machines whose clocks disagree still agree on when a lease has expired. The
`Storage` methods are `PostgresOperations`' (`_postgres_ops`); this module opens and closes the
pool.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import asyncpg

from aiki._core.clock import Clock
from aiki.errors import ConfigError, StorageError
from aiki.storage._postgres_errors import cannot_connect
from aiki.storage._postgres_ops import PostgresOperations
from aiki.storage._postgres_schema import migrate
from aiki.storage._postgres_statements import DRIVER_ERRORS
from aiki.storage._sql_files import load_migrations

__all__ = ["PostgresStorage"]


_SESSION_SETTINGS = {
    "application_name": "aiki",
    # JIT compiling pays off for analytics, not for these short statements.
    "jit": "off",
    # Plan each prepared statement once. Their parameters are ids, names and times, whose
    # values do not change the best plan, and planning a statement with several CTEs costs
    # more than running it; left to choose, PostgreSQL re-plans some of them every time.
    "plan_cache_mode": "force_generic_plan",
    # Every statement here finds its rows through an index. A planner that believes a table
    # small (no statistics yet: a new database, autovacuum off or behind) picks sequential
    # scans instead, and the generic plans above keep them while the table grows.
    "enable_seqscan": "off",
}


async def _init_session(conn: asyncpg.Connection[Any]) -> None:
    """Settings only some servers know; run once per new connection."""
    if conn.get_server_version() >= (13,):
        # A claim reads runs_pending in (workflow, version, id) order. An incremental sort can
        # sort the output of runs_by_workflow into that order, one workflow at a time, and the
        # planner prices that as if it stopped early; it reads every run of the workflow
        # (bench/postgres_indexes.py: a 25-page claim read 1,000 pages).
        await conn.execute("SET enable_incremental_sort = off")


async def _keep_session(conn: object) -> None:
    """Return a connection to the pool as it is.

    asyncpg's default reset sends `RESET ALL; UNLISTEN *; ...`: one more round trip for every
    statement. Nothing here changes session state once `_init_session` has set it up (no SET,
    LISTEN or session advisory lock; the migration lock is a transaction's); a reset would
    undo that setup. asyncpg still rolls back a transaction left open.
    """


class PostgresStorage(PostgresOperations):
    """The `Storage` protocol on a PostgreSQL database.

    Use it as an async context manager, or call `open()` and `close()`. Opening creates the
    pool and applies pending migrations. Each method is one transaction (and, but for
    `fire_timers` with work to do, one statement: one round trip). Concurrent enqueues, task
    starts, task ends and run ends share their statement and commit with others of their
    kind: one round trip for many calls, each with its own checks and result.

    Args:
        dsn: a libpq connection URL, `postgresql://user:password@host:port/database`.
        clock: None (the default) reads every time from the database clock. Tests pass a
            `FakeClock`: its reading is then sent with each statement in place of the
            database's, so that they can move time.
        min_size: connections the pool keeps open.
        max_size: connections the pool opens at most.
        command_timeout_s: how long one statement may take before it fails with
            `StorageError`.
        connect_timeout_s: how long opening a connection may take.
    """

    def __init__(
        self,
        dsn: str,
        *,
        clock: Clock | None = None,
        min_size: int = 2,
        max_size: int = 10,
        command_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigError(
                f"PostgreSQL pool sizes need 0 <= min_size <= max_size and max_size >= 1, "
                f"got min_size={min_size}, max_size={max_size}"
            )
        super().__init__(clock=clock)
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout_s = command_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._lifecycle = asyncio.Lock()  # open() and close() one at a time

    @property
    def pool_size(self) -> tuple[int, int]:
        """The fewest and most connections this storage keeps open."""
        return self._min_size, self._max_size

    @property
    def dsn(self) -> str:
        """The connection URL."""
        return self._dsn

    @property
    def clock(self) -> Clock | None:
        """The test clock standing in for the database clock, or None: the database's."""
        return self._clock

    def __repr__(self) -> str:
        return f"PostgresStorage({_redacted(self._dsn)!r})"

    async def __aenter__(self) -> PostgresStorage:
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
        """Connect and apply pending migrations (a no-op if already open).

        Raises:
            StorageError: the database cannot be reached or migrated.
        """
        async with self._lifecycle:
            if self._pool is not None:
                return
            try:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    command_timeout=self._command_timeout_s,
                    timeout=self._connect_timeout_s,
                    server_settings=_SESSION_SETTINGS,
                    init=_init_session,
                    reset=_keep_session,
                )
            except DRIVER_ERRORS as exc:
                raise StorageError(
                    f"{self!r}: cannot connect: {cannot_connect(self._dsn, exc)}"
                ) from exc
            try:
                async with pool.acquire() as conn:
                    await migrate(conn, load_migrations("postgres"))
            except BaseException as exc:
                pool.terminate()
                if isinstance(exc, DRIVER_ERRORS):
                    raise StorageError(f"{self!r}: cannot apply migrations: {exc}") from exc
                raise
            self._pool = pool

    async def close(self) -> None:
        """Let calls in progress finish, then close the pool. It may be opened again."""
        async with self._lifecycle:
            pool, self._pool = self._pool, None  # new calls are refused from here on
            if pool is None:
                return
            await self._idle.wait()
            await self._writers.drain()  # writes whose callers have stopped waiting
            try:
                await asyncio.wait_for(pool.close(), timeout=self._command_timeout_s)
            except DRIVER_ERRORS:
                pool.terminate()


def _redacted(dsn: str) -> str:
    """The URL without its password, for messages and reprs."""
    scheme, sep, rest = dsn.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return dsn
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
