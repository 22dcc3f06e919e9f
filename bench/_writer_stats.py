"""Counts the SQLite writer's transactions and operations, for benchmarks only.

`SqliteWriter` exposes no counters, so this wraps its private `_transaction` method (one call
per batch, i.e. per BEGIN ... COMMIT) on the class. The wrapper runs on the writer thread; only
that thread writes the counters, and the event loop reads them between phases.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiki.storage._sqlite_writer import SqliteWriter


@dataclass
class WriterStats:
    transactions: int = 0  # BEGIN ... COMMIT (or a failed attempt at one)
    write_transactions: int = 0  # BEGIN IMMEDIATE: at least one write in the batch
    writes: int = 0  # operations run in a SAVEPOINT
    reads: int = 0  # read-only operations (get_run, get_history, list_runs)
    largest_batch: int = 0

    def checkpoint(self) -> WriterStats:
        """A copy of the counts so far; the largest batch starts again from zero."""
        copy = WriterStats(**vars(self))
        self.largest_batch = 0
        return copy

    def since(self, before: WriterStats) -> WriterStats:
        """What happened after `before` (a checkpoint); the largest batch is since then."""
        delta = {name: value - getattr(before, name) for name, value in vars(self).items()}
        delta["largest_batch"] = self.largest_batch
        return WriterStats(**delta)


@contextmanager
def counting_transactions() -> Iterator[WriterStats]:
    """Count every batch any `SqliteWriter` commits while the block runs."""
    stats = WriterStats()
    original: Callable[..., Any] = SqliteWriter._transaction

    def counted(self: SqliteWriter, conn: sqlite3.Connection, batch: list[Any]) -> Any:
        writes = sum(1 for request in batch if request.write)
        stats.transactions += 1
        stats.write_transactions += writes > 0
        stats.writes += writes
        stats.reads += len(batch) - writes
        stats.largest_batch = max(stats.largest_batch, len(batch))
        return original(self, conn, batch)

    SqliteWriter._transaction = counted  # type: ignore[method-assign]  # bench instrumentation
    try:
        yield stats
    finally:
        SqliteWriter._transaction = original  # type: ignore[method-assign]
