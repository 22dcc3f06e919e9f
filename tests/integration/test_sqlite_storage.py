"""What the SQLite backend does beyond the storage contract: schema, queries, writer thread."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from aiki._core.clock import FakeClock
from aiki._core.ids import RunId, WorkerId
from aiki._core.models import Lease, NewRun, ServedVersion, WorkflowKey
from aiki.errors import LeaseLostError, StorageError
from aiki.storage._sql_files import load_migrations, load_queries, parse_queries
from aiki.storage._sqlite_schema import connect, migrate, split_statements
from aiki.storage._sqlite_writer import SqliteWriter
from aiki.storage.sqlite import SqliteStorage

KEY = WorkflowKey(name="greet", version="1")


def new_run(i: int = 0) -> NewRun:
    return NewRun(workflow=KEY.name, version=KEY.version, payload_json=f'{{"i":{i}}}')


def query_db(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "aiki.db"


async def test_migrations_apply_once(db: Path, clock: FakeClock) -> None:
    async with SqliteStorage(str(db), clock=clock):
        pass
    first = query_db(db, "SELECT version, name, applied_at FROM schema_migrations")
    assert [row[:2] for row in first] == [(m.version, m.name) for m in load_migrations("sqlite")]
    await clock.advance(1_000)
    async with SqliteStorage(str(db), clock=clock) as storage:
        await storage.enqueue(new_run())
    assert query_db(db, "SELECT version, name, applied_at FROM schema_migrations") == first


async def test_two_processes_opening_a_new_file_migrate_it_once(db: Path, clock: FakeClock) -> None:
    stores = [SqliteStorage(str(db), clock=clock) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    await asyncio.gather(*(store.close() for store in stores))
    applied = [(m.version,) for m in load_migrations("sqlite")]
    assert query_db(db, "SELECT version FROM schema_migrations ORDER BY version") == applied


async def test_database_is_in_wal_mode(db: Path, clock: FakeClock) -> None:
    async with SqliteStorage(str(db), clock=clock):
        assert query_db(db, "PRAGMA journal_mode") == [("wal",)]


async def test_open_failure_is_a_storage_error(tmp_path: Path, clock: FakeClock) -> None:
    storage = SqliteStorage(str(tmp_path), clock=clock)  # a folder is no database file
    with pytest.raises(StorageError) as caught:
        await storage.open()
    assert isinstance(caught.value.__cause__, sqlite3.Error)


async def test_use_before_open_is_a_storage_error(db: Path, clock: FakeClock) -> None:
    with pytest.raises(StorageError, match="not open"):
        await SqliteStorage(str(db), clock=clock).get_run(RunId("0" * 26))


async def test_open_is_idempotent_and_reopen_after_close_works(db: Path, clock: FakeClock) -> None:
    storage = SqliteStorage(str(db), clock=clock)
    await storage.open()
    await storage.open()
    run = await storage.get_run((await storage.enqueue(new_run())).id)
    await storage.close()
    await storage.close()
    await storage.open()
    try:
        assert run is not None
        assert await storage.get_run(run.id) == run
    finally:
        await storage.close()


async def test_versions_known_before_the_upgrade_stay_known(db: Path, clock: FakeClock) -> None:
    """A database from before workers' registrations were told apart keeps what it accepted."""
    conn = connect(str(db), busy_timeout_ms=1_000)
    older = [m for m in load_migrations("sqlite") if m.version < 3]
    migrate(conn, older, now_ms=clock.now_ms())
    conn.execute("INSERT INTO workflows (name, version, first_seen) VALUES ('greet', '1', 5)")
    conn.close()

    async with SqliteStorage(str(db), clock=clock) as storage:
        assert await storage.served_versions("greet") == [ServedVersion(name="greet", version="1")]


async def test_workers_and_workflows_are_recorded(db: Path, clock: FakeClock) -> None:
    other = WorkflowKey(name="other", version="2")
    async with SqliteStorage(str(db), clock=clock) as storage:
        served = [ServedVersion(name=k.name, version=k.version) for k in (KEY, other)]
        await storage.register_worker(WorkerId("w1"), served, 1_000)
        await storage.enqueue(NewRun(workflow="third", version="3", payload_json="{}"))
        await clock.advance(500)
        await storage.heartbeat(WorkerId("w1"), [], 1_000)
    workers = query_db(db, "SELECT id, workflows, last_seen FROM workers")
    assert workers == [
        (
            "w1",
            '[{"name":"greet","version":"1"},{"name":"other","version":"2"}]',
            clock.now_ms(),
        )
    ]
    workflows = query_db(db, "SELECT name, version FROM workflows ORDER BY name")
    assert workflows == [("greet", "1"), ("other", "2"), ("third", "3")]


# --- SQL files ----------------------------------------------------------------------------------


def test_parse_queries() -> None:
    text = """
-- a file comment
-- name: first
-- what it does
SELECT 1;

-- name: second
SELECT *
FROM t
WHERE a = :a;
"""
    assert parse_queries(text) == {"first": "SELECT 1", "second": "SELECT *\nFROM t\nWHERE a = :a"}
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(ValueError, match="empty"):
        parse_queries("-- name: a\n-- nothing\n")


def test_split_statements_keeps_trigger_bodies_whole() -> None:
    script = """
-- comment
CREATE TABLE t (a INTEGER);
CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
    UPDATE t SET a = a + 1;
    DELETE FROM t WHERE a > 10;
END;
-- trailing comment
"""
    statements = list(split_statements(script))
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(ValueError, match="incomplete"):
        list(split_statements("SELECT 1"))


def test_every_query_compiles_against_the_schema(tmp_path: Path) -> None:
    conn = connect(str(tmp_path / "q.db"), busy_timeout_ms=1_000)
    try:
        migrate(conn, load_migrations("sqlite"), now_ms=0)
        for name, sql in load_queries("sqlite").items():
            try:
                conn.execute(f"EXPLAIN {sql}", {}).fetchall()
            except sqlite3.ProgrammingError:
                pass  # unbound parameters: the statement compiled, that is what matters
            except sqlite3.Error as exc:
                raise AssertionError(f"query {name!r} does not compile: {exc}") from exc
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ("pending_ids", "runs_pending"),
        ("due_waits", "runs_wait_due"),
        ("expired_leases", "runs_lease_due"),
        ("next_wait_due", "runs_wait_due"),
        ("next_lease_due", "runs_lease_due"),
        ("find_by_idempotency_key", "runs_idempotency_key"),
        ("list_runs_by_workflow", "runs_by_workflow"),
        ("list_runs_by_state", "runs_by_state"),
    ],
)
def test_hot_queries_use_their_index(tmp_path: Path, query: str, index: str) -> None:
    conn = connect(str(tmp_path / "q.db"), busy_timeout_ms=1_000)
    try:
        migrate(conn, load_migrations("sqlite"), now_ms=0)
        sql = load_queries("sqlite")[query]
        params = {
            name: 0
            for name in ("now", "limit", "after", "workflow", "version", "state", "idempotency_key")
        }
        plan = " ".join(str(row) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        assert index in plan, plan
    finally:
        conn.close()


# --- the writer thread --------------------------------------------------------------------------


def _memory() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (v INTEGER)")
    return conn


async def test_writer_isolates_a_failing_operation() -> None:
    writer = SqliteWriter(_memory)
    await writer.start()
    try:

        def bad_sql(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t (v) VALUES (-1)")
            conn.execute("INSERT INTO nowhere VALUES (1)")

        def lost_lease(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t (v) VALUES (-2)")
            raise LeaseLostError("r", 1)

        def insert(value: int) -> Coroutine[Any, Any, object]:
            return writer.run(lambda conn: conn.execute("INSERT INTO t VALUES (?)", (value,)))

        calls: list[Coroutine[Any, Any, object]] = [
            *(insert(i) for i in range(20)),
            writer.run(bad_sql),
            writer.run(lost_lease),
            *(insert(i) for i in range(20, 40)),
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [result for result in results if isinstance(result, BaseException)]
        assert len(errors) == 2
        storage_error = next(error for error in errors if isinstance(error, StorageError))
        assert isinstance(storage_error.__cause__, sqlite3.OperationalError)
        assert any(isinstance(error, LeaseLostError) for error in errors)
        values = await writer.run(
            lambda conn: [row[0] for row in conn.execute("SELECT v FROM t ORDER BY v")],
            write=False,
        )
        assert values == list(range(40))
    finally:
        await writer.close()


async def test_writer_with_batches_of_one() -> None:
    writer = SqliteWriter(_memory, max_batch=1)
    await writer.start()
    try:
        await asyncio.gather(
            *(writer.run(lambda conn: conn.execute("INSERT INTO t VALUES (1)")) for _ in range(10))
        )
        assert await writer.run(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone()) == (
            10,
        )
    finally:
        await writer.close()


async def test_a_cancelled_caller_does_not_undo_its_write() -> None:
    writer = SqliteWriter(_memory)
    await writer.start()
    try:
        pending = asyncio.create_task(
            writer.run(lambda conn: conn.execute("INSERT INTO t VALUES (7)"))
        )
        await asyncio.sleep(0)  # queued
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        count = await writer.run(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone())
        assert count == (1,)
    finally:
        await writer.close()


async def test_writer_refuses_work_after_close() -> None:
    writer = SqliteWriter(_memory)
    await writer.start()
    await writer.close()
    with pytest.raises(StorageError):
        await writer.run(lambda conn: None)


async def test_writer_reports_a_failed_connect() -> None:
    def broken() -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    writer = SqliteWriter(broken)
    with pytest.raises(StorageError, match="unable to open"):
        await writer.start()
    with pytest.raises(StorageError):
        await writer.run(lambda conn: None)
    await writer.close()


async def test_stale_lease_from_another_connection(db: Path, clock: FakeClock) -> None:
    async with (
        SqliteStorage(str(db), clock=clock) as first,
        SqliteStorage(str(db), clock=clock) as second,
    ):
        run = (await first.enqueue(new_run())).id
        claimed = await first.claim(WorkerId("a"), [KEY], 1, 1_000)
        await first.release(Lease(run_id=run, revision=claimed[0].revision))
        await second.claim(WorkerId("b"), [KEY], 1, 1_000)
        with pytest.raises(LeaseLostError):
            await first.release(Lease(run_id=run, revision=claimed[0].revision))
