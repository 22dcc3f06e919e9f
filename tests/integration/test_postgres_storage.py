"""PostgresStorage against a real server: concurrent servers, the database clock, lost connections.

The contract suite (tests/contract) checks the semantics; these tests check what only a shared
PostgreSQL shows: several pools (several servers) racing on one database.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from _services import PostgresDatabase
from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    EventKind,
    Lease,
    NewRun,
    RunOutcome,
    TaskAddress,
    TaskEnd,
    TaskOutcome,
    TaskStart,
    WaitInfo,
    WaitKind,
    WorkflowKey,
)
from aiki._core.serde import dumps
from aiki._core.states import RunState
from aiki.errors import IdempotencyConflictError, LeaseLostError, StorageError
from aiki.storage._sql_files import load_migrations
from aiki.storage.postgres import PostgresStorage
from helpers import until

pytestmark = pytest.mark.postgres

KEY = WorkflowKey(name="greet", version="1")
LEASE_MS = 60_000


@pytest.fixture
async def two(database: PostgresDatabase) -> AsyncIterator[tuple[PostgresStorage, PostgresStorage]]:
    """Two storages on one database: two pools, as two servers would have."""
    first = PostgresStorage(database.dsn, max_size=4)
    second = PostgresStorage(database.dsn, max_size=4)
    async with first, second:
        yield first, second


def new_run(i: int = 0, *, idempotency_key: str | None = None) -> NewRun:
    return NewRun(
        workflow=KEY.name,
        version=KEY.version,
        payload_json=dumps({"i": i}),
        idempotency_key=idempotency_key,
    )


async def until_database_clock_passes(storage: PostgresStorage, deadline_ms: int) -> None:
    """Wait for the database clock (the only clock these storages read) to pass a deadline."""
    async with asyncio.timeout(5):
        while await storage.now_ms() <= deadline_ms:
            await asyncio.sleep(0.01)


# --- migrations ---------------------------------------------------------------------------------


async def test_servers_starting_at_once_apply_the_migrations_once(
    database: PostgresDatabase,
) -> None:
    # A schema of its own is an empty database for the migrations; asyncpg passes unknown URL
    # options on as server settings.
    schema = f"fresh_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(database.dsn)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        dsn = f"{database.dsn}?search_path={schema}"
        storages = [PostgresStorage(dsn, min_size=1) for _ in range(4)]
        await asyncio.gather(*(storage.open() for storage in storages))
        try:
            run = await storages[0].get_run((await storages[0].enqueue(new_run())).id)
            assert run is not None
            assert await storages[3].get_run(run.id) == run
        finally:
            await asyncio.gather(*(storage.close() for storage in storages))
        async with PostgresStorage(dsn) as again:  # everything applied: opening changes nothing
            assert await again.get_run(run.id) == run
        versions = await admin.fetch(f"SELECT version FROM {schema}.schema_migrations")
        assert [row[0] for row in versions] == [m.version for m in load_migrations("postgres")]
        tables = await admin.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
        assert {row[0] for row in tables} == {
            "schema_migrations", "runs", "task_results", "history", "workers", "workflows",
            "events",
        }  # fmt: skip
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def test_open_fails_with_storage_error_when_postgres_is_unreachable() -> None:
    storage = PostgresStorage("postgresql://postgres@127.0.0.1:1/postgres", connect_timeout_s=2)
    with pytest.raises(StorageError) as caught:
        await storage.open()
    assert "cannot connect" in str(caught.value)
    with pytest.raises(StorageError):
        await storage.get_run(RunId("0" * 26))


# --- two servers on one database ----------------------------------------------------------------


async def test_claimers_on_two_servers_never_share_a_run(
    two: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, second = two
    await asyncio.gather(*(first.enqueue(new_run(i)) for i in range(200)))
    claims: list[RunId] = []

    async def claimer(storage: PostgresStorage, worker: str) -> None:
        while True:
            batch = await storage.claim(WorkerId(worker), [KEY], 7, LEASE_MS)
            if not batch and len(claims) == 200:
                return
            claims.extend(claimed.run.id for claimed in batch)
            for claimed in batch:
                lease = Lease(run_id=claimed.run.id, revision=claimed.revision)
                await storage.finish(lease, RunOutcome(state=RunState.COMPLETED))

    async with asyncio.timeout(30):
        await asyncio.gather(
            *(claimer(storage, f"w{i}-{n}") for i in range(2) for n, storage in enumerate(two))
        )
    assert len(claims) == len(set(claims)) == 200
    completed = await first.list_runs(state=RunState.COMPLETED, limit=1_000)
    assert len(completed) == 200
    for run_id in claims[:20]:
        history = [event.kind for event in await second.get_history(run_id)]
        assert history == [EventKind.ENQUEUED, EventKind.CLAIMED, EventKind.COMPLETED]


async def test_fifty_concurrent_enqueues_on_two_servers_make_one_run(
    two: tuple[PostgresStorage, PostgresStorage],
) -> None:
    for round_ in range(5):
        key = f"race-{round_}"
        results = await asyncio.gather(
            *(two[i % 2].enqueue(new_run(idempotency_key=key)) for i in range(50))
        )
        assert len({result.id for result in results}) == 1
        assert sum(result.created for result in results) == 1
        history = await two[0].get_history(results[0].id)
        assert [event.kind for event in history] == [EventKind.ENQUEUED]


async def test_racing_enqueues_with_other_payloads_are_refused(
    two: tuple[PostgresStorage, PostgresStorage],
) -> None:
    outcomes = await asyncio.gather(
        *(two[i % 2].enqueue(new_run(i % 3, idempotency_key="mixed")) for i in range(48)),
        return_exceptions=True,
    )
    accepted = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert all(isinstance(error, IdempotencyConflictError) for error in refused)
    assert len(accepted) == 16 and len(refused) == 32  # one payload in three won the key
    assert len({result.id for result in accepted}) == 1
    assert sum(result.created for result in accepted) == 1
    assert {error.run_id for error in refused if isinstance(error, IdempotencyConflictError)} == {
        accepted[0].id
    }


async def test_timers_fire_once_when_two_servers_fire_them_at_once(
    two: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, second = two
    await asyncio.gather(*(first.enqueue(new_run(i)) for i in range(120)))
    claimed = await first.claim(WorkerId("w"), [KEY], 120, LEASE_MS)
    now = await first.now_ms()
    waiting, lost = claimed[:60], claimed[60:]
    for run in waiting:  # woken when their wait is over
        lease = Lease(run_id=run.run.id, revision=run.revision)
        await first.suspend(lease, WaitInfo(kind=WaitKind.RETRY, until_ms=now + 50))
    # The others' worker goes silent: its leases are 50 ms long from here.
    reply = await first.heartbeat(
        WorkerId("w"), [Lease(run_id=run.run.id, revision=run.revision) for run in lost], 50
    )
    assert reply.lost == ()
    await until_database_clock_passes(first, now + 100)

    woken: list[RunId] = []
    expired: list[RunId] = []

    async def fire(storage: PostgresStorage) -> None:
        while True:
            report = await storage.fire_timers(max_recovery_attempts=3, limit=7)
            woken.extend(report.woken)
            expired.extend(report.expired)
            assert report.ended == ()
            if not (report.woken or report.expired) and len(woken) + len(expired) == 120:
                return

    async with asyncio.timeout(30):
        await asyncio.gather(fire(first), fire(second), fire(first), fire(second))
    assert sorted(woken) == sorted(run.run.id for run in waiting)
    assert sorted(expired) == sorted(run.run.id for run in lost)
    for run in claimed:
        history = Counter(event.kind for event in await second.get_history(run.run.id))
        assert history[EventKind.WOKEN] + history[EventKind.LEASE_EXPIRED] == 1
        status = await second.get_run(run.run.id)
        assert status is not None and status.state is RunState.PENDING
    report = await first.fire_timers(max_recovery_attempts=3)
    assert report.next_due_ms is None


async def test_due_times_come_from_the_database_clock(database: PostgresDatabase) -> None:
    async with PostgresStorage(database.dsn) as storage:
        admin = await asyncpg.connect(database.dsn)
        try:
            db_now = await admin.fetchval(
                "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
            )
        finally:
            await admin.close()
        before = await storage.now_ms()
        assert abs(before - db_now) < 1_000
        run = await storage.get_run((await storage.enqueue(new_run())).id)
        assert run is not None
        (claimed,) = await storage.claim(WorkerId("w"), [KEY], 1, 5_000)
        after = await storage.now_ms()
        assert before <= run.created_at_ms <= claimed.now_ms <= after
        assert claimed.run.lease_expires_at_ms == claimed.now_ms + 5_000


# --- writes sent together ----------------------------------------------------------------------


def _end(task: str = "t", result_json: str | None = "1") -> TaskEnd:
    return TaskEnd(
        address=TaskAddress(task=task, digest="0" * 64),
        attempt=1,
        worker_id=WorkerId("w"),
        outcome=TaskOutcome.COMPLETED,
        duration_ms=1,
        result_json=result_json,
        start_reported=False,  # the end carries its start, as a quick task's does
    )


async def _running(storage: PostgresStorage, count: int) -> list[Lease]:
    await asyncio.gather(*(storage.enqueue(new_run(i)) for i in range(count)))
    claimed = await storage.claim(WorkerId("w"), [KEY], count, LEASE_MS)
    assert len(claimed) == count
    return [Lease(run_id=run.run.id, revision=run.revision) for run in claimed]


async def test_concurrent_writes_each_get_their_own_answer(database: PostgresDatabase) -> None:
    async with PostgresStorage(database.dsn, max_size=4) as storage:
        leases = await _running(storage, 60)
        stale = Lease(run_id=leases[7].run_id, revision=leases[7].revision - 1)
        ends = [storage.finish_task(lease, _end()) for lease in leases]
        results = await asyncio.gather(*ends[:30], storage.finish_task(stale, _end("other")),
                                       *ends[30:], return_exceptions=True)  # fmt: skip
        assert isinstance(results[30], LeaseLostError)
        assert results[:30] + results[31:] == [False] * 60
        finished = await asyncio.gather(
            *(
                storage.finish(lease, RunOutcome(state=RunState.COMPLETED, result_json="2"))
                for lease in leases
            )
        )
        assert [run.id for run in finished] == [lease.run_id for lease in leases]
        assert all(run.state is RunState.COMPLETED and run.result == 2 for run in finished)
        for lease in leases[:10]:
            kinds = [event.kind for event in await storage.get_history(lease.run_id)]
            assert kinds == [
                EventKind.ENQUEUED, EventKind.CLAIMED, EventKind.TASK_STARTED,
                EventKind.TASK_COMPLETED, EventKind.COMPLETED,
            ]  # fmt: skip


async def test_a_write_with_bad_data_fails_alone(database: PostgresDatabase) -> None:
    async with PostgresStorage(database.dsn, max_size=4) as storage:
        leases = await _running(storage, 20)
        # Text PostgreSQL refuses as json: the statement carrying it fails as a whole.
        ends = [_end(result_json="{not json" if i == 5 else "1") for i in range(20)]
        results = await asyncio.gather(
            *(storage.finish_task(lease, end) for lease, end in zip(leases, ends, strict=True)),
            return_exceptions=True,
        )
        assert isinstance(results[5], StorageError)
        assert results[:5] + results[6:] == [False] * 19
        for i, lease in enumerate(leases):
            kinds = [event.kind for event in await storage.get_history(lease.run_id)]
            assert (EventKind.TASK_COMPLETED in kinds) is (i != 5)


async def test_writes_to_one_run_are_made_in_the_order_they_were_asked_for(
    database: PostgresDatabase,
) -> None:
    async with PostgresStorage(database.dsn, max_size=4) as storage:
        (lease,) = await _running(storage, 1)
        starts = [
            TaskStart(address=TaskAddress(task=f"t{i}", digest="0" * 64), attempt=1,
                      worker_id=WorkerId("w"))
            for i in range(12)
        ]  # fmt: skip
        await asyncio.gather(*(storage.start_task(lease, start) for start in starts))
        history = await storage.get_history(lease.run_id)
        tasks = [event.data["task"] for event in history if event.kind is EventKind.TASK_STARTED]
        assert tasks == [f"t{i}" for i in range(12)]
        assert [event.seq for event in history] == list(range(1, 15))


async def test_bursts_of_writes_all_complete(database: PostgresDatabase) -> None:
    # Bursts whose first two statements often answer in one turn of the event loop: a write
    # left queued with no statement in flight to pick it up would hang here.
    async with PostgresStorage(database.dsn, max_size=2) as storage:
        for burst in range(30):
            async with asyncio.timeout(10):
                results = await asyncio.gather(
                    *(storage.enqueue(new_run(burst * 100 + i)) for i in range(40))
                )
            assert all(result.created for result in results)


async def test_a_write_cancelled_before_it_is_sent_is_not_made(
    database: PostgresDatabase,
) -> None:
    async with PostgresStorage(database.dsn, max_size=4) as storage:
        (lease,) = await _running(storage, 1)
        first, second = (
            asyncio.create_task(storage.start_task(lease, TaskStart(
                address=TaskAddress(task=task, digest="0" * 64), attempt=1,
                worker_id=WorkerId("w"))))
            for task in ("sent", "cancelled")
        )  # fmt: skip
        await asyncio.sleep(0)  # both asked: the first is in flight, the second waits for it
        second.cancel()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        history = await storage.get_history(lease.run_id)
        assert [event.data.get("task") for event in history[2:]] == ["sent"]


# --- lost connections ---------------------------------------------------------------------------


async def _terminate_aiki_backends(dsn: str) -> int:
    admin = await asyncpg.connect(dsn)
    try:
        terminated: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'aiki' "
            "AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    return terminated


def _server_pids(pool: asyncpg.Pool[asyncpg.Record]) -> set[int]:
    """The server processes of the pool's open connections (asyncpg keeps them in holders)."""
    connections = [getattr(holder, "_con", None) for holder in getattr(pool, "_holders", ())]
    return {c.get_server_pid() for c in connections if c is not None and not c.is_closed()}


async def _one_workflow(storage: PostgresStorage, i: int) -> None:
    await storage.enqueue(new_run(i))
    for claimed in await storage.claim(WorkerId(f"w{i}"), [KEY], 1, LEASE_MS):
        lease = Lease(run_id=claimed.run.id, revision=claimed.revision)
        address = TaskAddress(task="t", digest="0" * 64)
        await storage.start_task(
            lease, TaskStart(address=address, attempt=1, worker_id=WorkerId("w"))
        )
        end = TaskEnd(
            address=address,
            attempt=1,
            worker_id=WorkerId("w"),
            outcome=TaskOutcome.COMPLETED,
            duration_ms=1,
            result_json="1",
        )
        await storage.finish_task(lease, end)
        await storage.finish(lease, RunOutcome(state=RunState.COMPLETED, result_json="1"))


async def test_storage_recovers_when_its_connections_are_terminated_mid_load(
    database: PostgresDatabase,
) -> None:
    async with PostgresStorage(database.dsn, min_size=4, max_size=8) as storage:
        failures: list[BaseException] = []
        stop = asyncio.Event()
        completed = 0  # workflows done by all loaders
        progressed = asyncio.Event()

        async def load(n: int) -> int:
            nonlocal completed
            done = 0
            while not stop.is_set():
                try:
                    await _one_workflow(storage, n * 10_000 + done)
                    done += 1
                    completed += 1
                    progressed.set()
                except StorageError as exc:  # anything else fails the test
                    failures.append(exc)
            return done

        async def more_completed(count: int) -> None:
            target = completed + count
            while completed < target:
                progressed.clear()
                await progressed.wait()

        async with asyncio.timeout(30):  # a call that hangs fails the test here
            loaders = [asyncio.create_task(load(n)) for n in range(8)]
            await more_completed(16)  # under load: every connection busy
            terminated = await _terminate_aiki_backends(database.dsn)
            await more_completed(16)  # on new connections
            terminated += await _terminate_aiki_backends(database.dsn)
            await more_completed(16)
            stop.set()
            done = await asyncio.gather(*loaders)

        assert terminated >= 4
        assert failures, "terminating every connection mid-load failed no call"
        assert all(isinstance(error.__cause__, Exception) for error in failures)
        assert sum(done) > 0
        # The pool replaced its connections: every call succeeds again.
        await asyncio.gather(*(_one_workflow(storage, 900_000 + i) for i in range(20)))
        assert len(await storage.list_runs(state=RunState.COMPLETED, limit=10_000)) >= 20


async def test_idle_connections_terminated_are_replaced(database: PostgresDatabase) -> None:
    async with PostgresStorage(database.dsn, min_size=4, max_size=4) as storage:
        await asyncio.gather(*(storage.enqueue(new_run(i)) for i in range(8)))
        pool = storage._pool
        assert pool is not None
        terminated = _server_pids(pool)
        assert len(terminated) == 4
        assert await _terminate_aiki_backends(database.dsn) == 4
        # Wait until the pool has read the server's goodbye on every connection (it closes or
        # replaces each): a call on one that has not seen it yet fails, as mid-load above.
        await until(lambda: not _server_pids(pool) & terminated)
        results = await asyncio.gather(
            *(storage.get_run(RunId("0" * 26)) for _ in range(8)), return_exceptions=True
        )
        assert results == [None] * 8
