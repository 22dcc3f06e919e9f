"""Counts PostgresStorage's transactions and operations, for benchmarks only.

Transactions are counted at the driver: a statement asyncpg sends on a connection that is not
in a transaction is one (implicit) transaction, and an explicit `BEGIN` opens one. Operations
are the storage's methods called, reads and writes. Both wrap classes while the block runs,
as `_writer_stats.counting_transactions` does for SQLite, and fill the same `WriterStats`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _writer_stats import WriterStats
from asyncpg.connection import Connection
from asyncpg.transaction import Transaction

from aiki.storage.postgres import PostgresStorage

READS = (
    "get_run",
    "get_runs",
    "list_runs",
    "get_history",
    "list_workers",
    "list_workflows",
    "served_versions",
    "next_event",
    "now_ms",
)
WRITES = (
    "enqueue",
    "claim",
    "heartbeat",
    "start_task",
    "finish_task",
    "suspend",
    "send_event",
    "release",
    "finish",
    "cancel",
    "fire_timers",
    "register_worker",
    "unregister_worker",
)


@contextmanager
def counting_pg_transactions() -> Iterator[WriterStats]:
    """Count what every `PostgresStorage` does while the block runs.

    `write_transactions` and `largest_batch` are left at 0: a driver-level count cannot tell
    which operation a transaction served.
    """
    stats = WriterStats()
    originals: dict[tuple[type, str], Callable[..., Any]] = {}

    def patch(cls: type, name: str, wrapper: Callable[..., Any]) -> None:
        originals[(cls, name)] = getattr(cls, name)
        setattr(cls, name, wrapper)

    # Private asyncpg members: every statement passes through `_execute`, and a transaction
    # knows its connection as `_connection` (asyncpg 0.30 to 0.32).
    execute = Connection._execute  # type: ignore[attr-defined]  # private, see above
    start = Transaction.start

    async def counted_execute(self: Connection, *args: Any, **kwargs: Any) -> Any:
        if not self.is_in_transaction():
            stats.transactions += 1
        return await execute(self, *args, **kwargs)

    async def counted_start(self: Transaction) -> None:
        if not self._connection.is_in_transaction():  # type: ignore[attr-defined]  # see above
            stats.transactions += 1
        await start(self)

    patch(Connection, "_execute", counted_execute)
    patch(Transaction, "start", counted_start)
    for names, field in ((READS, "reads"), (WRITES, "writes")):
        for name in names:
            patch(PostgresStorage, name, _counted(getattr(PostgresStorage, name), stats, field))
    try:
        yield stats
    finally:
        for (cls, name), original in originals.items():
            setattr(cls, name, original)


def _counted(method: Callable[..., Any], stats: WriterStats, field: str) -> Callable[..., Any]:
    async def counted(*args: Any, **kwargs: Any) -> Any:
        setattr(stats, field, getattr(stats, field) + 1)
        return await method(*args, **kwargs)

    return counted
