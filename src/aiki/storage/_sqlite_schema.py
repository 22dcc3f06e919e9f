"""Opening a SQLite database: connection settings and the migration runner."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from aiki.storage._sql_files import Migration

# UPDATE ... RETURNING arrived in SQLite 3.35.
MIN_SQLITE_VERSION = (3, 35, 0)

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at INTEGER NOT NULL
)
"""


SYNCHRONOUS_MODES = ("full", "normal")


def connect(path: str, *, busy_timeout_ms: int, synchronous: str = "full") -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL.

    synchronous=FULL (the default) syncs the WAL at every commit: a commit Aiki has
    acknowledged (an enqueue, a task result) survives a power loss. Group commit shares each
    sync among all the writes of a batch. synchronous=NORMAL syncs only at checkpoints: faster
    for one run at a time, and still safe against a crashed process, but a power loss may drop
    the last commits.
    """
    if synchronous not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        wanted = ".".join(map(str, MIN_SQLITE_VERSION))
        raise sqlite3.NotSupportedError(
            f"SQLite {sqlite3.sqlite_version} is too old: Aiki needs {wanted} or newer"
        )
    if path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # first use of .aiki/aiki.db
    conn = sqlite3.connect(path, isolation_level=None, cached_statements=256)
    try:
        # The busy timeout first: switching to WAL needs a lock another process may hold.
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        _enable_wal(conn, busy_timeout_ms)
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cache_size = -16000")  # KiB
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is
    # locked" at once, without its busy handler, when another connection is switching too.
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
            return
        except sqlite3.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)  # on the writer thread, before it takes any work


def split_statements(script: str) -> Iterator[str]:
    """The statements of a SQL script, each complete as SQLite's own parser judges it."""
    buffer: list[str] = []
    for line in script.splitlines(keepends=True):
        buffer.append(line)
        text = "".join(buffer)
        if sqlite3.complete_statement(text):
            yield text.strip()
            buffer = []
    rest = "".join(line for line in buffer if not line.lstrip().startswith("--"))
    if rest.strip():
        raise ValueError(f"incomplete SQL statement at the end of a script: {rest.strip()!r}")


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration], *, now_ms: int) -> list[int]:
    """Apply the migrations not applied yet, each in its own transaction; return their versions.

    Each migration checks `schema_migrations` again under the write lock, so two processes
    opening one database at once apply it once.
    """
    conn.execute("BEGIN IMMEDIATE")  # a write from the start: waits for the lock, never deadlocks
    conn.execute(_CREATE_MIGRATIONS_TABLE)
    conn.execute("COMMIT")
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied: list[int] = []
    for migration in migrations:
        if migration.version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
            ).fetchone():
                conn.execute("COMMIT")
                continue
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, now_ms),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
