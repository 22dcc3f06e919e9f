"""`SqliteStorage`: the embedded storage, one SQLite file in WAL mode.

All database work happens on one dedicated thread with one connection (see
`_sqlite_writer`), so the event loop never blocks on SQLite, and concurrent calls are
committed in groups: one transaction, one commit, many operations.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from types import TracebackType

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
from aiki.storage import _sqlite_ops as ops
from aiki.storage._sql_files import load_migrations
from aiki.storage._sqlite_schema import SYNCHRONOUS_MODES, connect, migrate
from aiki.storage._sqlite_writer import SqliteWriter

__all__ = ["SqliteStorage"]


class SqliteStorage:
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
        self._synchronous = synchronous
        self._path = path
        self._clock = clock
        self._max_batch = max_batch
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: SqliteWriter | None = None
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
        return conn

    def _open_writer(self) -> SqliteWriter:
        if self._writer is None:
            raise StorageError(f"{self!r} is not open")
        return self._writer

    async def now_ms(self) -> int:
        """The storage clock: the clock this storage was built with."""
        return self._clock.now_ms()

    async def enqueue(self, new: NewRun) -> Enqueued:
        """See `Storage.enqueue`."""
        clock = self._clock
        return await self._open_writer().run(lambda conn: ops.enqueue(conn, clock, new))

    async def get_run(self, run_id: RunId) -> RunStatus | None:
        """See `Storage.get_run`."""
        return await self._open_writer().run(lambda conn: ops.get_run(conn, run_id), write=False)

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: RunState | None = None,
        after: RunId | None = None,
        limit: int = 100,
    ) -> list[RunStatus]:
        """See `Storage.list_runs`."""
        return await self._open_writer().run(
            lambda conn: ops.list_runs(
                conn, workflow=workflow, state=state, after=after, limit=limit
            ),
            write=False,
        )

    async def get_history(self, run_id: RunId) -> list[HistoryEvent]:
        """See `Storage.get_history`."""
        return await self._open_writer().run(
            lambda conn: ops.get_history(conn, run_id), write=False
        )

    async def claim(
        self,
        worker_id: WorkerId,
        workflows: Sequence[WorkflowKey],
        limit: int,
        lease_ms: int,
    ) -> list[ClaimedRun]:
        """See `Storage.claim`."""
        clock = self._clock
        keys = tuple(workflows)
        return await self._open_writer().run(
            lambda conn: ops.claim(conn, clock, worker_id, keys, limit, lease_ms)
        )

    async def heartbeat(
        self, worker_id: WorkerId, leases: Sequence[Lease], lease_ms: int
    ) -> HeartbeatReply:
        """See `Storage.heartbeat`."""
        clock = self._clock
        held = tuple(leases)
        return await self._open_writer().run(
            lambda conn: ops.heartbeat(conn, clock, worker_id, held, lease_ms)
        )

    async def start_task(self, lease: Lease, start: TaskStart) -> None:
        """See `Storage.start_task`."""
        clock = self._clock
        await self._open_writer().run(lambda conn: ops.start_task(conn, clock, lease, start))

    async def finish_task(self, lease: Lease, end: TaskEnd) -> bool:
        """See `Storage.finish_task`."""
        clock = self._clock
        return await self._open_writer().run(lambda conn: ops.finish_task(conn, clock, lease, end))

    async def suspend(self, lease: Lease, wait: WaitInfo) -> bool:
        """See `Storage.suspend`."""
        clock = self._clock
        return await self._open_writer().run(lambda conn: ops.suspend(conn, clock, lease, wait))

    async def send_event(self, new: NewEvent) -> EventSent:
        """See `Storage.send_event`."""
        clock = self._clock
        return await self._open_writer().run(lambda conn: ops.send_event(conn, clock, new))

    async def next_event(self, run_id: RunId, name: str, after_seq: int) -> RunEvent | None:
        """See `Storage.next_event`."""
        return await self._open_writer().run(
            lambda conn: ops.next_event(conn, run_id, name, after_seq), write=False
        )

    async def release(self, lease: Lease) -> None:
        """See `Storage.release`."""
        clock = self._clock
        await self._open_writer().run(lambda conn: ops.release(conn, clock, lease))

    async def finish(self, lease: Lease, outcome: RunOutcome) -> RunStatus:
        """See `Storage.finish`."""
        clock = self._clock
        return await self._open_writer().run(lambda conn: ops.finish(conn, clock, lease, outcome))

    async def cancel(self, run_id: RunId, reason: str | None) -> RunStatus:
        """See `Storage.cancel`."""
        clock = self._clock
        return await self._open_writer().run(lambda conn: ops.cancel(conn, clock, run_id, reason))

    async def fire_timers(self, *, max_recovery_attempts: int, limit: int = 1000) -> TimerReport:
        """See `Storage.fire_timers`."""
        clock = self._clock
        return await self._open_writer().run(
            lambda conn: ops.fire_timers(
                conn, clock, max_recovery_attempts=max_recovery_attempts, limit=limit
            )
        )

    async def register_worker(
        self, worker_id: WorkerId, workflows: Sequence[WorkflowKey], lease_ms: int
    ) -> None:
        """See `Storage.register_worker`."""
        clock = self._clock
        keys = tuple(workflows)
        await self._open_writer().run(
            lambda conn: ops.register_worker(conn, clock, worker_id, keys, lease_ms)
        )

    async def unregister_worker(self, worker_id: WorkerId) -> None:
        """See `Storage.unregister_worker`."""
        clock = self._clock
        await self._open_writer().run(lambda conn: ops.unregister_worker(conn, clock, worker_id))

    async def list_workers(self) -> list[WorkerInfo]:
        """See `Storage.list_workers`."""
        clock = self._clock
        return await self._open_writer().run(
            lambda conn: ops.list_workers(conn, clock), write=False
        )

    async def workflow_versions(self, name: str) -> list[str]:
        """See `Storage.workflow_versions`."""
        return await self._open_writer().run(
            lambda conn: ops.workflow_versions(conn, name), write=False
        )

    async def list_workflows(self) -> list[WorkflowSummary]:
        """See `Storage.list_workflows`."""
        clock = self._clock
        return await self._open_writer().run(
            lambda conn: ops.list_workflows(conn, clock), write=False
        )
