"""`PostgresStorage`: the production storage, PostgreSQL through an asyncpg connection pool.

Several servers may share one database: migrations are applied under an advisory lock, claims
take rows with `FOR UPDATE SKIP LOCKED`, and every due time is read from the database clock,
so servers on machines whose clocks disagree still agree on when a lease has expired.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import asyncpg

from aiki._core.clock import Clock
from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    ClaimedRun,
    Enqueued,
    EventSent,
    HeartbeatReply,
    HistoryEvent,
    Lease,
    NewEvent,
    NewRun,
    RunEvent,
    RunOutcome,
    RunStatus,
    TaskEnd,
    TaskStart,
    TimerReport,
    WaitInfo,
    WorkerInfo,
    WorkflowKey,
    WorkflowSummary,
)
from aiki._core.states import RunState
from aiki.errors import ConfigError, StorageError
from aiki.storage import _postgres_ops as ops
from aiki.storage._postgres_errors import cannot_connect
from aiki.storage._postgres_schema import migrate
from aiki.storage._sql_files import load_migrations

__all__ = ["PostgresStorage"]

T = TypeVar("T")

# What asyncpg raises for a failed query or a lost connection; each becomes a StorageError.
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


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

# Statements of one batched write kind (enqueue, task start, task end, run end) in flight at
# once. Each takes every call of its kind queued since the last one went: under load, calls
# share round trips and commits; two let one statement execute while the other commits.
_WRITE_FLUSHES = 2


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


class PostgresStorage:
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
        self._dsn = dsn
        self._clock = clock
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout_s = command_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._pool: ops.Pool | None = None
        self._writers = ops.Writers.create(max_flushes=_WRITE_FLUSHES)
        self._lifecycle = asyncio.Lock()  # open() and close() one at a time
        self._calls = 0  # calls in progress: close() waits for them
        self._idle = asyncio.Event()
        self._idle.set()

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
            except _DRIVER_ERRORS as exc:
                raise StorageError(
                    f"{self!r}: cannot connect: {cannot_connect(self._dsn, exc)}"
                ) from exc
            try:
                async with pool.acquire() as conn:
                    await migrate(conn, load_migrations("postgres"))
            except BaseException as exc:
                pool.terminate()
                if isinstance(exc, _DRIVER_ERRORS):
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
            except _DRIVER_ERRORS:
                pool.terminate()

    async def _call(self, op: Callable[[ops.Pool], Awaitable[T]]) -> T:
        """Run one operation on the pool, translating driver errors into `StorageError`."""
        pool = self._pool
        if pool is None:
            raise StorageError(f"{self!r} is not open")
        self._calls += 1
        self._idle.clear()
        try:
            return await op(pool)
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        finally:
            self._calls -= 1
            if self._calls == 0:
                self._idle.set()

    def _now(self) -> int | None:
        """A test clock's reading, or None: the statement reads the database clock."""
        return None if self._clock is None else self._clock.now_ms()

    async def now_ms(self) -> int:
        """The storage clock: the database's (or the test clock this storage was built with)."""
        if self._clock is not None:
            return self._clock.now_ms()
        return await self._call(ops.now_ms)

    async def enqueue(self, new: NewRun) -> Enqueued:
        """See `Storage.enqueue`."""
        now = self._now()
        return await self._call(lambda db: ops.enqueue(db, self._writers, now, new))

    async def get_run(self, run_id: RunId) -> RunStatus | None:
        """See `Storage.get_run`."""
        return await self._call(lambda db: ops.get_run(db, run_id))

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: RunState | None = None,
        after: RunId | None = None,
        limit: int = 100,
    ) -> list[RunStatus]:
        """See `Storage.list_runs`."""
        return await self._call(
            lambda db: ops.list_runs(db, workflow=workflow, state=state, after=after, limit=limit)
        )

    async def get_history(self, run_id: RunId) -> list[HistoryEvent]:
        """See `Storage.get_history`."""
        return await self._call(lambda db: ops.get_history(db, run_id))

    async def claim(
        self,
        worker_id: WorkerId,
        workflows: Sequence[WorkflowKey],
        limit: int,
        lease_ms: int,
    ) -> list[ClaimedRun]:
        """See `Storage.claim`."""
        now = self._now()
        keys = tuple(workflows)
        return await self._call(lambda db: ops.claim(db, now, worker_id, keys, limit, lease_ms))

    async def heartbeat(
        self, worker_id: WorkerId, leases: Sequence[Lease], lease_ms: int
    ) -> HeartbeatReply:
        """See `Storage.heartbeat`."""
        now = self._now()
        held = tuple(leases)
        return await self._call(lambda db: ops.heartbeat(db, now, worker_id, held, lease_ms))

    async def start_task(self, lease: Lease, start: TaskStart) -> None:
        """See `Storage.start_task`."""
        now = self._now()
        await self._call(lambda db: ops.start_task(db, self._writers, now, lease, start))

    async def finish_task(self, lease: Lease, end: TaskEnd) -> bool:
        """See `Storage.finish_task`."""
        now = self._now()
        return await self._call(lambda db: ops.finish_task(db, self._writers, now, lease, end))

    async def suspend(self, lease: Lease, wait: WaitInfo) -> bool:
        """See `Storage.suspend`."""
        now = self._now()
        return await self._call(lambda db: ops.suspend(db, now, lease, wait))

    async def send_event(self, new: NewEvent) -> EventSent:
        """See `Storage.send_event`."""
        now = self._now()
        return await self._call(lambda db: ops.send_event(db, now, new))

    async def next_event(self, run_id: RunId, name: str, after_seq: int) -> RunEvent | None:
        """See `Storage.next_event`."""
        return await self._call(lambda db: ops.next_event(db, run_id, name, after_seq))

    async def release(self, lease: Lease) -> None:
        """See `Storage.release`."""
        now = self._now()
        await self._call(lambda db: ops.release(db, now, lease))

    async def finish(self, lease: Lease, outcome: RunOutcome) -> RunStatus:
        """See `Storage.finish`."""
        now = self._now()
        return await self._call(lambda db: ops.finish(db, self._writers, now, lease, outcome))

    async def cancel(self, run_id: RunId, reason: str | None) -> RunStatus:
        """See `Storage.cancel`."""
        now = self._now()
        return await self._call(lambda db: ops.cancel(db, now, run_id, reason))

    async def fire_timers(self, *, max_recovery_attempts: int, limit: int = 1000) -> TimerReport:
        """See `Storage.fire_timers`."""
        now = self._now()
        return await self._call(
            lambda db: ops.fire_timers(
                db, now, max_recovery_attempts=max_recovery_attempts, limit=limit
            )
        )

    async def register_worker(
        self, worker_id: WorkerId, workflows: Sequence[WorkflowKey], lease_ms: int
    ) -> None:
        """See `Storage.register_worker`."""
        now = self._now()
        keys = tuple(workflows)
        await self._call(lambda db: ops.register_worker(db, now, worker_id, keys, lease_ms))

    async def unregister_worker(self, worker_id: WorkerId) -> None:
        """See `Storage.unregister_worker`."""
        now = self._now()
        await self._call(lambda db: ops.unregister_worker(db, now, worker_id))

    async def list_workers(self) -> list[WorkerInfo]:
        """See `Storage.list_workers`."""
        now = self._now()
        return await self._call(lambda db: ops.list_workers(db, now))

    async def workflow_versions(self, name: str) -> list[str]:
        """See `Storage.workflow_versions`."""
        return await self._call(lambda db: ops.workflow_versions(db, name))

    async def list_workflows(self) -> list[WorkflowSummary]:
        """See `Storage.list_workflows`."""
        now = self._now()
        return await self._call(lambda db: ops.list_workflows(db, now))


def _redacted(dsn: str) -> str:
    """The URL without its password, for messages and reprs."""
    scheme, sep, rest = dsn.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return dsn
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
