"""The `Storage` contract: every backend must pass this suite, written against the protocol only."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import pytest

from _services import PostgresDatabase
from aiki._core.clock import FakeClock
from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    EVENT_RECEIVED_DIGEST,
    EVENT_TASK_PREFIX,
    ClaimedRun,
    Enqueued,
    EventKind,
    HistoryEvent,
    Lease,
    NewEvent,
    NewRun,
    RunEvent,
    RunOutcome,
    RunStatus,
    ServedVersion,
    TaskAddress,
    TaskEnd,
    TaskOutcome,
    TaskStart,
    WaitInfo,
    WaitKind,
    WorkflowKey,
)
from aiki._core.serde import JSONValue, digest, dumps
from aiki._core.states import TARGET, RunAction, RunState, allowed
from aiki.errors import (
    ErrorInfo,
    EventRejectedError,
    IdempotencyConflictError,
    IllegalTransitionError,
    LeaseLostError,
    RunNotFoundError,
    StorageError,
)
from aiki.storage import Storage
from aiki.storage.postgres import PostgresStorage
from aiki.storage.sqlite import SqliteStorage

LEASE_MS = 30_000
WORKER = WorkerId("worker-1")
OTHER_WORKER = WorkerId("worker-2")
KEY = WorkflowKey(name="greet", version="1.0.0")

_names = itertools.count()


# --- fixtures -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backend:
    """Builds storages of one kind; `shared` says whether two of them see the same database."""

    new: Callable[[], Storage]
    shared: bool


@pytest.fixture(
    params=["sqlite-file", "sqlite-memory", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def backend(request: pytest.FixtureRequest, tmp_path: object, clock: FakeClock) -> Backend:
    if request.param == "sqlite-file":
        path = str(tmp_path) + "/aiki.db"
        return Backend(new=lambda: SqliteStorage(path, clock=clock), shared=True)
    if request.param == "postgres":
        database: PostgresDatabase = request.getfixturevalue("postgres_db")
        await database.reset()
        # The fake clock's readings stand in for the database clock, as for SQLite.
        return Backend(
            new=lambda: PostgresStorage(database.dsn, clock=clock, min_size=1), shared=True
        )
    return Backend(new=lambda: SqliteStorage(":memory:", clock=clock), shared=False)


@pytest.fixture
async def storage(backend: Backend) -> AsyncIterator[Storage]:
    store = backend.new()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# --- helpers ------------------------------------------------------------------------------------


def fresh_key() -> WorkflowKey:
    """A workflow of its own, so a test's claims take only the runs it means."""
    return WorkflowKey(name=f"wf-{next(_names)}", version="1")


def served(*keys: WorkflowKey) -> list[ServedVersion]:
    """Versions as a worker registers them, with no payload schema."""
    return [ServedVersion(name=key.name, version=key.version) for key in keys]


def new_run(
    payload: JSONValue = None, *, key: WorkflowKey = KEY, idempotency_key: str | None = None
) -> NewRun:
    return NewRun(
        workflow=key.name,
        version=key.version,
        payload_json=dumps({"n": 1} if payload is None else payload),
        idempotency_key=idempotency_key,
    )


def address(task: str = "fetch", index: int = 0) -> TaskAddress:
    return TaskAddress(task=task, digest=digest(dumps({"task": task})), index=index)


def lease_of(claimed: ClaimedRun) -> Lease:
    return Lease(run_id=claimed.run.id, revision=claimed.revision)


def task_end(
    outcome: TaskOutcome = TaskOutcome.COMPLETED,
    *,
    at: TaskAddress | None = None,
    attempt: int = 1,
    result: JSONValue = None,
) -> TaskEnd:
    failed = outcome is not TaskOutcome.COMPLETED
    return TaskEnd(
        address=at or address(),
        attempt=attempt,
        worker_id=WORKER,
        outcome=outcome,
        duration_ms=5,
        result_json=None if failed else dumps(result),
        error=ErrorInfo(type="ValueError", message="boom") if failed else None,
        retry_delay_ms=1_000 if outcome is TaskOutcome.RETRYING else None,
    )


async def enqueue(storage: Storage, key: WorkflowKey | None = None) -> RunStatus:
    enqueued = await storage.enqueue(new_run(key=key or fresh_key()))
    return await status(storage, enqueued.id)


async def claim_only(storage: Storage, key: WorkflowKey, worker: WorkerId = WORKER) -> ClaimedRun:
    claimed = await storage.claim(worker, [key], 10, LEASE_MS)
    assert len(claimed) == 1
    return claimed[0]


async def running(storage: Storage) -> ClaimedRun:
    key = fresh_key()
    await storage.enqueue(new_run(key=key))
    return await claim_only(storage, key)


async def status(storage: Storage, run_id: RunId) -> RunStatus:
    run = await storage.get_run(run_id)
    assert run is not None
    return run


async def snapshot(storage: Storage, run_id: RunId) -> tuple[RunStatus, list[HistoryEvent]]:
    return await status(storage, run_id), await storage.get_history(run_id)


def kinds(history: list[HistoryEvent]) -> list[EventKind]:
    return [event.kind for event in history]


async def in_state(storage: Storage, state: RunState) -> Lease:
    """A run driven into `state`, and a lease carrying its current revision."""
    key = fresh_key()
    run = await enqueue(storage, key)
    if state is RunState.PENDING:
        return Lease(run_id=run.id, revision=run.revision)
    if state is RunState.CANCELLED:
        cancelled = await storage.cancel(run.id, "test")
        return Lease(run_id=run.id, revision=cancelled.revision)
    lease = lease_of(await claim_only(storage, key))
    if state is RunState.WAITING:
        until = await storage.now_ms() + 60_000
        await storage.suspend(lease, WaitInfo(kind=WaitKind.RETRY, until_ms=until))
    elif state is RunState.COMPLETED:
        await storage.finish(lease, RunOutcome(state=RunState.COMPLETED, result_json="1"))
    elif state is RunState.FAILED:
        error = ErrorInfo(type="ValueError", message="no")
        await storage.finish(lease, RunOutcome(state=RunState.FAILED, error=error))
    current = await status(storage, run.id)
    assert current.state is state
    return Lease(run_id=run.id, revision=current.revision)


# --- lifecycle and clock ------------------------------------------------------------------------


async def test_now_ms_is_the_storage_clock(storage: Storage, clock: FakeClock) -> None:
    assert await storage.now_ms() == clock.now_ms()
    await clock.advance(1_234)
    assert await storage.now_ms() == clock.now_ms()


async def test_calls_after_close_raise_storage_error(backend: Backend) -> None:
    store = backend.new()
    await store.open()
    await store.close()
    with pytest.raises(StorageError):
        await store.enqueue(new_run())


async def test_close_finishes_queued_writes(backend: Backend) -> None:
    store = backend.new()
    await store.open()
    key = fresh_key()
    writes = [asyncio.create_task(store.enqueue(new_run({"i": i}, key=key))) for i in range(100)]
    await asyncio.sleep(0)  # let every task queue its write before close() is called
    await store.close()
    results = await asyncio.gather(*writes)
    assert all(result.created for result in results)


async def test_reopen_keeps_data(backend: Backend) -> None:
    if not backend.shared:
        pytest.skip("each instance of this backend has its own database")
    first = backend.new()
    await first.open()
    claimed = await running(first)
    await first.start_task(
        lease_of(claimed), TaskStart(address=address(), attempt=1, worker_id=WORKER)
    )
    before = await snapshot(first, claimed.run.id)
    await first.close()

    second = backend.new()
    await second.open()  # the migrations are applied already: opening again must not fail
    try:
        assert await snapshot(second, claimed.run.id) == before
        await second.finish(lease_of(claimed), RunOutcome(state=RunState.COMPLETED))
    finally:
        await second.close()


# --- enqueue and reads --------------------------------------------------------------------------


async def test_enqueue_creates_a_pending_run(storage: Storage, clock: FakeClock) -> None:
    enqueued = await storage.enqueue(new_run({"user": "123"}, idempotency_key="k-1"))
    run = await status(storage, enqueued.id)
    assert enqueued.created
    assert run.state is RunState.PENDING
    assert (run.workflow, run.version) == (KEY.name, KEY.version)
    assert run.payload == {"user": "123"}
    assert run.idempotency_key == "k-1"
    assert (run.attempt, run.recovery_attempts, run.revision) == (0, 0, 0)
    assert run.created_at_ms == run.updated_at_ms == clock.now_ms()
    assert run.wait is None and run.worker_id is None and run.lease_expires_at_ms is None
    assert await storage.get_run(run.id) == run
    history = await storage.get_history(run.id)
    assert kinds(history) == [EventKind.ENQUEUED]
    assert history[0].state is RunState.PENDING
    assert history[0].at_ms == clock.now_ms()


async def test_get_runs_reads_many_at_once(storage: Storage) -> None:
    runs = [await enqueue(storage) for _ in range(3)]
    wanted = [runs[2].id, RunId("no-such-run"), runs[0].id, runs[0].id]

    found = await storage.get_runs(wanted)

    assert sorted(found, key=lambda r: r.id) == sorted([runs[0], runs[2]], key=lambda r: r.id)
    assert await storage.get_runs([]) == []


async def test_unknown_run(storage: Storage) -> None:
    assert await storage.get_run(RunId("0" * 26)) is None
    assert await storage.get_history(RunId("0" * 26)) == []


async def test_same_idempotency_key_and_payload_returns_the_run_in_any_state(
    storage: Storage,
) -> None:
    key = fresh_key()
    first = await storage.enqueue(new_run({"a": 1}, key=key, idempotency_key="once"))
    again = await storage.enqueue(new_run({"a": 1}, key=key, idempotency_key="once"))
    assert not again.created
    assert again == Enqueued(id=first.id, created=False)

    claimed = await claim_only(storage, key)
    await storage.finish(lease_of(claimed), RunOutcome(state=RunState.COMPLETED, result_json="7"))
    after_end = await storage.enqueue(new_run({"a": 1}, key=key, idempotency_key="once"))
    assert not after_end.created
    assert after_end.id == first.id
    ended = await status(storage, after_end.id)
    assert ended.state is RunState.COMPLETED
    assert ended.result == 7
    assert len(await storage.list_runs(workflow=key.name)) == 1
    assert kinds(await storage.get_history(first.id)).count(EventKind.ENQUEUED) == 1


async def test_same_idempotency_key_other_payload_is_refused(storage: Storage) -> None:
    key = fresh_key()
    first = await storage.enqueue(new_run({"a": 1}, key=key, idempotency_key="once"))
    with pytest.raises(IdempotencyConflictError) as caught:
        await storage.enqueue(new_run({"a": 2}, key=key, idempotency_key="once"))
    assert caught.value.run_id == first.id
    assert caught.value.idempotency_key == "once"
    assert [run.id for run in await storage.list_runs(workflow=key.name)] == [first.id]


async def test_idempotency_key_is_per_workflow_version(storage: Storage) -> None:
    name = fresh_key().name
    v1 = await storage.enqueue(
        new_run(key=WorkflowKey(name=name, version="1"), idempotency_key="k")
    )
    v2 = await storage.enqueue(
        new_run(key=WorkflowKey(name=name, version="2"), idempotency_key="k")
    )
    other = await storage.enqueue(new_run(key=fresh_key(), idempotency_key="k"))
    assert v1.created and v2.created and other.created
    assert len({v1.id, v2.id, other.id}) == 3


async def test_runs_without_a_key_are_never_merged(storage: Storage) -> None:
    key = fresh_key()
    a = await storage.enqueue(new_run({"same": 1}, key=key))
    b = await storage.enqueue(new_run({"same": 1}, key=key))
    assert a.created and b.created and a.id != b.id


async def test_concurrent_enqueues_with_one_key_make_one_run(storage: Storage) -> None:
    key = fresh_key()
    results = await asyncio.gather(
        *(storage.enqueue(new_run({"x": 1}, key=key, idempotency_key="race")) for _ in range(50))
    )
    assert len({result.id for result in results}) == 1
    assert sum(result.created for result in results) == 1
    assert len(await storage.list_runs(workflow=key.name)) == 1


async def test_list_runs_newest_first_with_filters_and_pages(storage: Storage) -> None:
    key, other = fresh_key(), fresh_key()
    ids = [(await storage.enqueue(new_run({"i": i}, key=key))).id for i in range(5)]
    other_id = (await storage.enqueue(new_run(key=other))).id
    newest_first = sorted(ids, reverse=True)

    mine = await storage.list_runs(workflow=key.name)
    assert [run.id for run in mine] == newest_first
    everything = await storage.list_runs()
    assert [run.id for run in everything] == sorted([*ids, other_id], reverse=True)

    page1 = await storage.list_runs(workflow=key.name, limit=2)
    page2 = await storage.list_runs(workflow=key.name, limit=2, after=page1[-1].id)
    page3 = await storage.list_runs(workflow=key.name, limit=2, after=page2[-1].id)
    assert [run.id for run in [*page1, *page2, *page3]] == newest_first
    assert len(page3) == 1

    claimed = await storage.claim(WORKER, [key], 2, LEASE_MS)
    claimed_ids = sorted((c.run.id for c in claimed), reverse=True)
    by_state = await storage.list_runs(workflow=key.name, state=RunState.RUNNING)
    assert [run.id for run in by_state] == claimed_ids
    pending = await storage.list_runs(state=RunState.PENDING)
    assert {run.id for run in pending} >= set(ids) - set(claimed_ids)
    assert all(run.state is RunState.PENDING for run in pending)
    assert await storage.list_runs(workflow="no-such-workflow") == []


# --- claim --------------------------------------------------------------------------------------


async def test_claim_takes_oldest_first_up_to_limit(storage: Storage, clock: FakeClock) -> None:
    key = fresh_key()
    ids = sorted([(await storage.enqueue(new_run({"i": i}, key=key))).id for i in range(5)])
    await clock.advance(10)

    claimed = await storage.claim(WORKER, [key], 3, LEASE_MS)
    assert [c.run.id for c in claimed] == ids[:3]
    for c in claimed:
        assert c.now_ms == clock.now_ms()
        assert c.revision == c.run.revision == 1
        assert c.run.state is RunState.RUNNING
        assert c.run.attempt == 1
        assert c.run.worker_id == WORKER
        assert c.run.lease_expires_at_ms == clock.now_ms() + LEASE_MS
        assert c.run.updated_at_ms == clock.now_ms()
        assert c.tasks == ()
        history = await storage.get_history(c.run.id)
        assert kinds(history) == [EventKind.ENQUEUED, EventKind.CLAIMED]
        assert history[-1].state is RunState.RUNNING
        assert history[-1].data == {"worker_id": WORKER, "attempt": 1}
    rest = await storage.claim(WORKER, [key], 10, LEASE_MS)
    assert [c.run.id for c in rest] == ids[3:]
    assert await storage.claim(WORKER, [key], 10, LEASE_MS) == []


async def test_a_run_created_claimed_is_what_enqueue_then_claim_store(
    storage: Storage, clock: FakeClock
) -> None:
    key = fresh_key()
    claimed = await storage.enqueue_claimed(new_run({"i": 1}, key=key), WORKER, LEASE_MS)

    run = claimed.run
    assert claimed.now_ms == clock.now_ms() and claimed.tasks == ()
    assert claimed.revision == run.revision == 1
    assert run.state is RunState.RUNNING and run.attempt == 1
    assert run.worker_id == WORKER
    assert run.lease_expires_at_ms == clock.now_ms() + LEASE_MS
    assert run.created_at_ms == run.updated_at_ms == clock.now_ms()
    assert run.payload == {"i": 1} and run.recovery_attempts == 0
    assert await status(storage, run.id) == run
    history = await storage.get_history(run.id)
    assert kinds(history) == [EventKind.ENQUEUED, EventKind.CLAIMED]
    assert [event.seq for event in history] == [1, 2]
    assert [event.state for event in history] == [RunState.PENDING, RunState.RUNNING]
    assert history[-1].data == {"worker_id": WORKER, "attempt": 1}
    assert key.name in {w.name for w in await storage.list_workflows()}
    assert await storage.claim(OTHER_WORKER, [key], 10, LEASE_MS) == []

    # Its lease is like any claim's: kept by heartbeats, ended by the run's end.
    lease = lease_of(claimed)
    assert (await storage.heartbeat(WORKER, [lease], LEASE_MS)).lost == ()
    await storage.finish_task(lease, task_end())
    ended = await storage.finish(lease, RunOutcome(state=RunState.COMPLETED, result_json="7"))
    assert ended.state is RunState.COMPLETED and ended.result == 7


async def test_a_run_created_claimed_goes_back_when_its_lease_expires(
    storage: Storage, clock: FakeClock
) -> None:
    key = fresh_key()
    claimed = await storage.enqueue_claimed(new_run(key=key), WORKER, LEASE_MS)
    await clock.advance(LEASE_MS)
    assert (await storage.fire_timers(max_recovery_attempts=3)).expired == (claimed.run.id,)
    again = await claim_only(storage, key, OTHER_WORKER)
    assert again.run.id == claimed.run.id
    assert again.run.attempt == 2 and again.run.recovery_attempts == 1


async def test_a_run_with_an_idempotency_key_cannot_be_created_claimed(
    storage: Storage,
) -> None:
    key = fresh_key()
    with pytest.raises(ValueError, match="idempotency key 'k-1'"):
        await storage.enqueue_claimed(new_run(key=key, idempotency_key="k-1"), WORKER, LEASE_MS)
    assert await storage.claim(WORKER, [key], 10, LEASE_MS) == []
    assert await storage.list_runs(workflow=key.name, state=None, after=None, limit=10) == []


async def test_claim_only_takes_the_given_workflow_versions(storage: Storage) -> None:
    name = fresh_key().name
    v1, v2, v3 = (WorkflowKey(name=name, version=v) for v in ("1", "2", "3"))
    first = (await storage.enqueue(new_run(key=v1))).id
    second = (await storage.enqueue(new_run(key=v2))).id
    third = (await storage.enqueue(new_run(key=v3))).id
    claimed = await storage.claim(WORKER, [v2, v1], 10, LEASE_MS)
    assert [c.run.id for c in claimed] == sorted([first, second])
    assert (await status(storage, third)).state is RunState.PENDING


async def test_claim_with_nothing_to_take(storage: Storage) -> None:
    key = fresh_key()
    await storage.enqueue(new_run(key=key))
    assert await storage.claim(WORKER, [], 10, LEASE_MS) == []
    assert await storage.claim(WORKER, [key], 0, LEASE_MS) == []
    assert await storage.claim(WORKER, [fresh_key()], 10, LEASE_MS) == []


async def test_concurrent_claimers_never_share_a_run(storage: Storage) -> None:
    key = fresh_key()
    ids = {(await storage.enqueue(new_run({"i": i}, key=key))).id for i in range(30)}
    batches = await asyncio.gather(
        *(storage.claim(WorkerId(f"w{i}"), [key], 4, LEASE_MS) for i in range(10))
    )
    claimed = [c.run.id for batch in batches for c in batch]
    assert len(claimed) == len(set(claimed)) == 30
    assert set(claimed) == ids


async def test_claimers_on_two_connections_never_share_a_run(backend: Backend) -> None:
    if not backend.shared:
        pytest.skip("each instance of this backend has its own database")
    first, second = backend.new(), backend.new()
    await first.open()
    await second.open()
    try:
        key = fresh_key()
        await asyncio.gather(*(first.enqueue(new_run({"i": i}, key=key)) for i in range(40)))
        batches = await asyncio.gather(
            *(
                store.claim(WorkerId(f"w{i}"), [key], 3, LEASE_MS)
                for i in range(10)
                for store in (first, second)
            )
        )
        claimed = [c.run.id for batch in batches for c in batch]
        assert len(claimed) == len(set(claimed)) == 40
    finally:
        await first.close()
        await second.close()


async def test_claim_brings_recorded_task_results(storage: Storage) -> None:
    key = fresh_key()
    run = await enqueue(storage, key)
    plain = await enqueue(storage, key)
    claimed = await storage.claim(WORKER, [key], 10, LEASE_MS)
    lease = lease_of(next(c for c in claimed if c.run.id == run.id))
    done, failed, retrying = address("a"), address("b"), address("a", index=1)
    await storage.finish_task(lease, task_end(at=done, result={"v": 1}))
    await storage.finish_task(lease, task_end(TaskOutcome.FAILED, at=failed, attempt=3))
    await storage.finish_task(lease, task_end(TaskOutcome.RETRYING, at=retrying, attempt=2))
    await storage.release(lease)
    await storage.release(lease_of(next(c for c in claimed if c.run.id == plain.id)))

    again = {c.run.id: c for c in await storage.claim(WORKER, [key], 10, LEASE_MS)}
    assert again[plain.id].tasks == ()
    records = {record.address: record for record in again[run.id].tasks}
    assert set(records) == {done, failed, retrying}
    assert records[done].outcome is TaskOutcome.COMPLETED
    assert records[done].result_json == dumps({"v": 1})
    assert records[done].attempts == 1
    assert records[done].error is None
    assert records[failed].outcome is TaskOutcome.FAILED
    assert records[failed].attempts == 3
    assert records[failed].error == ErrorInfo(type="ValueError", message="boom")
    assert records[retrying].outcome is TaskOutcome.RETRYING
    assert records[retrying].attempts == 2
    assert again[run.id].run.attempt == 2


# --- worker writes ------------------------------------------------------------------------------


async def test_task_events_and_results(storage: Storage, clock: FakeClock) -> None:
    claimed = await running(storage)
    lease = lease_of(claimed)
    at = address("fetch", index=2)
    await storage.start_task(lease, TaskStart(address=at, attempt=1, worker_id=WORKER))
    await clock.advance(5)
    retry = await storage.finish_task(lease, task_end(TaskOutcome.RETRYING, at=at, attempt=1))
    await storage.start_task(lease, TaskStart(address=at, attempt=2, worker_id=WORKER))
    done = await storage.finish_task(lease, task_end(at=at, attempt=2, result=[1, 2]))
    assert retry is False and done is False

    run, history = await snapshot(storage, claimed.run.id)
    assert run.revision == claimed.revision  # task writes keep the lease
    assert run.state is RunState.RUNNING
    assert kinds(history)[2:] == [
        EventKind.TASK_STARTED,
        EventKind.TASK_FAILED,
        EventKind.TASK_STARTED,
        EventKind.TASK_COMPLETED,
    ]
    assert [event.seq for event in history] == sorted(event.seq for event in history)
    assert len({event.seq for event in history}) == len(history)
    assert all(event.state is RunState.RUNNING for event in history[2:])
    started, failed, _, completed = history[2:]
    assert started.data == {
        "task": "fetch", "index": 2, "digest": at.digest, "attempt": 1, "worker_id": WORKER,
    }  # fmt: skip
    assert failed.at_ms == clock.now_ms()
    assert failed.data["task"] == "fetch"
    assert failed.data["index"] == 2
    assert failed.data["attempt"] == 1
    assert failed.data["final"] is False
    assert failed.data["retry_delay_ms"] == 1_000
    assert failed.data["duration_ms"] == 5
    assert failed.data["error"] == {"type": "ValueError", "message": "boom", "traceback": None}
    assert completed.data["attempt"] == 2
    assert completed.data["final"] is False
    assert completed.data["error"] is None


async def test_final_task_failure_is_marked_final(storage: Storage) -> None:
    claimed = await running(storage)
    await storage.finish_task(lease_of(claimed), task_end(TaskOutcome.FAILED, attempt=3))
    event = (await storage.get_history(claimed.run.id))[-1]
    assert event.kind is EventKind.TASK_FAILED
    assert event.data["final"] is True
    assert event.data["retry_delay_ms"] is None


async def test_suspend_then_wake(storage: Storage, clock: FakeClock) -> None:
    claimed = await running(storage)
    until = clock.now_ms() + 5_000
    wait = WaitInfo(kind=WaitKind.RETRY, until_ms=until, detail="fetch")
    await storage.suspend(lease_of(claimed), wait)

    run, history = await snapshot(storage, claimed.run.id)
    assert run.state is RunState.WAITING
    assert run.wait == wait
    assert run.revision == claimed.revision + 1
    assert run.worker_id is None and run.lease_expires_at_ms is None
    assert history[-1].kind is EventKind.SUSPENDED
    assert history[-1].state is RunState.WAITING
    assert history[-1].data == {"kind": "retry", "until_ms": until, "detail": "fetch"}

    early = await storage.fire_timers(max_recovery_attempts=3)
    assert early.woken == ()
    assert early.next_due_ms == until
    await clock.advance(5_000)
    report = await storage.fire_timers(max_recovery_attempts=3)
    assert report.woken == (claimed.run.id,)
    assert report.next_due_ms is None
    run, history = await snapshot(storage, claimed.run.id)
    assert run.state is RunState.PENDING
    assert run.wait is None
    assert run.revision == claimed.revision + 2
    assert history[-1].kind is EventKind.WOKEN
    assert history[-1].state is RunState.PENDING
    again = await claim_only(storage, WorkflowKey(name=run.workflow, version=run.version))
    assert again.run.attempt == 2
    assert again.revision == claimed.revision + 3


async def test_release_hands_the_run_back(storage: Storage) -> None:
    claimed = await running(storage)
    await storage.release(lease_of(claimed))
    run, history = await snapshot(storage, claimed.run.id)
    assert run.state is RunState.PENDING
    assert run.revision == claimed.revision + 1
    assert run.worker_id is None and run.lease_expires_at_ms is None
    assert history[-1].kind is EventKind.RELEASED
    assert history[-1].state is RunState.PENDING
    key = WorkflowKey(name=run.workflow, version=run.version)
    again = await claim_only(storage, key, OTHER_WORKER)
    assert again.run.worker_id == OTHER_WORKER
    assert again.run.attempt == 2
    assert again.run.recovery_attempts == 0


async def test_finish_completed(storage: Storage, clock: FakeClock) -> None:
    claimed = await running(storage)
    await clock.advance(100)
    outcome = RunOutcome(state=RunState.COMPLETED, result_json=dumps({"ok": True}))
    ended = await storage.finish(lease_of(claimed), outcome)
    assert ended == await storage.get_run(claimed.run.id)
    assert ended.state is RunState.COMPLETED
    assert ended.result == {"ok": True}
    assert ended.error is None
    assert ended.revision == claimed.revision + 1
    assert ended.updated_at_ms == clock.now_ms()
    assert ended.worker_id is None and ended.lease_expires_at_ms is None
    history = await storage.get_history(claimed.run.id)
    assert history[-1].kind is EventKind.COMPLETED
    assert history[-1].state is RunState.COMPLETED


async def test_finish_records_the_task_ends_it_carries_first(
    storage: Storage, clock: FakeClock
) -> None:
    """A run of quick tasks ends in one write: its task ends, in order, then its end."""
    claimed = await running(storage)
    first = replace(task_end(at=address("a"), result={"a": 1}), start_reported=False)
    second = task_end(at=address("b"), result=[2])  # its start is already written
    await storage.start_task(
        lease_of(claimed), TaskStart(address=second.address, attempt=1, worker_id=WORKER)
    )
    outcome = RunOutcome(
        state=RunState.COMPLETED, result_json=dumps("ok"), task_ends=(first, second)
    )

    ended = await storage.finish(lease_of(claimed), outcome)

    assert ended.state is RunState.COMPLETED
    history = await storage.get_history(claimed.run.id)
    assert kinds(history)[-5:] == [
        EventKind.TASK_STARTED,  # b's, written before
        EventKind.TASK_STARTED,  # a's, carried by its end
        EventKind.TASK_COMPLETED,
        EventKind.TASK_COMPLETED,
        EventKind.COMPLETED,
    ]
    assert [event.data.get("task") for event in history[-4:-1]] == ["a", "a", "b"]
    assert [event.seq for event in history] == list(range(1, len(history) + 1))
    assert [event.state for event in history[-4:-1]] == [RunState.RUNNING] * 3
    durations = [event.data["duration_ms"] for event in history[-3:-1]]
    assert durations == [first.duration_ms, second.duration_ms]


async def test_finish_under_a_lost_lease_records_none_of_its_task_ends(storage: Storage) -> None:
    claimed = await running(storage)
    stale = lease_of(claimed)
    await storage.release(stale)
    before = await snapshot(storage, claimed.run.id)
    outcome = RunOutcome(state=RunState.COMPLETED, result_json="1", task_ends=(task_end(),))

    with pytest.raises(LeaseLostError):
        await storage.finish(stale, outcome)

    assert await snapshot(storage, claimed.run.id) == before


async def test_finishes_of_many_runs_with_task_ends_go_together(storage: Storage) -> None:
    runs = [await running(storage) for _ in range(5)]
    ends = [
        tuple(task_end(at=address(f"t{j}"), result=i * 10 + j) for j in range(i))
        for i in range(len(runs))
    ]

    await asyncio.gather(
        *(
            storage.finish(
                lease_of(claimed),
                RunOutcome(state=RunState.COMPLETED, result_json=dumps(i), task_ends=ends[i]),
            )
            for i, claimed in enumerate(runs)
        )
    )

    for i, claimed in enumerate(runs):
        history = await storage.get_history(claimed.run.id)
        completed = [e for e in history if e.kind is EventKind.TASK_COMPLETED]
        assert [e.data["task"] for e in completed] == [f"t{j}" for j in range(i)]
        assert [event.seq for event in history] == list(range(1, len(history) + 1))
        assert (await status(storage, claimed.run.id)).result == i


async def test_finish_failed(storage: Storage) -> None:
    claimed = await running(storage)
    error = ErrorInfo(type="aiki.TaskFailedError", message="gave up", traceback="Traceback...")
    ended = await storage.finish(lease_of(claimed), RunOutcome(state=RunState.FAILED, error=error))
    assert ended.state is RunState.FAILED
    assert ended.error == error
    history = await storage.get_history(claimed.run.id)
    assert history[-1].kind is EventKind.FAILED
    assert history[-1].state is RunState.FAILED
    assert history[-1].data["error"] == error.to_json()


async def test_finish_cancelled(storage: Storage) -> None:
    claimed = await running(storage)
    outcome = RunOutcome(state=RunState.CANCELLED, reason="user asked")
    ended = await storage.finish(lease_of(claimed), outcome)
    assert ended.state is RunState.CANCELLED
    assert ended.cancel_reason == "user asked"
    history = await storage.get_history(claimed.run.id)
    assert history[-1].kind is EventKind.CANCELLED
    assert history[-1].state is RunState.CANCELLED


# --- fencing and the state machine --------------------------------------------------------------

LeaseWrite = Callable[[Storage, Lease], Awaitable[object]]

WORKER_WRITES: dict[str, LeaseWrite] = {
    "start_task": lambda s, lease: s.start_task(
        lease, TaskStart(address=address(), attempt=1, worker_id=WORKER)
    ),
    "finish_task": lambda s, lease: s.finish_task(lease, task_end()),
    "suspend": lambda s, lease: s.suspend(
        lease, WaitInfo(kind=WaitKind.RETRY, until_ms=1_900_000_000_000)
    ),
    "release": lambda s, lease: s.release(lease),
    "complete": lambda s, lease: s.finish(lease, RunOutcome(state=RunState.COMPLETED)),
    "fail": lambda s, lease: s.finish(
        lease, RunOutcome(state=RunState.FAILED, error=ErrorInfo(type="E", message="m"))
    ),
    "cancel": lambda s, lease: s.finish(lease, RunOutcome(state=RunState.CANCELLED)),
}
STATE_CHANGES = {
    "suspend": RunAction.SUSPEND,
    "release": RunAction.RELEASE,
    "complete": RunAction.COMPLETE,
    "fail": RunAction.FAIL,
    "cancel": RunAction.CANCEL,
}


@pytest.mark.parametrize("write", sorted(WORKER_WRITES))
async def test_stale_revision_is_refused_without_side_effects(storage: Storage, write: str) -> None:
    claimed = await running(storage)
    stale = lease_of(claimed)
    await storage.release(stale)
    key = WorkflowKey(name=claimed.run.workflow, version=claimed.run.version)
    current = await claim_only(storage, key, OTHER_WORKER)
    before = await snapshot(storage, claimed.run.id)

    with pytest.raises(LeaseLostError) as caught:
        await WORKER_WRITES[write](storage, stale)
    assert caught.value.run_id == claimed.run.id
    assert caught.value.revision == stale.revision
    assert await snapshot(storage, claimed.run.id) == before
    # The current owner is unaffected.
    await WORKER_WRITES[write](storage, lease_of(current))


@pytest.mark.parametrize("write", sorted(WORKER_WRITES))
async def test_a_write_sent_again_after_a_lost_reply_is_applied_once(
    storage: Storage, write: str
) -> None:
    """A worker sends a write again when the reply to the first was lost (the server died
    mid-request): the repeat succeeds, answers the same, and changes nothing."""
    claimed = await running(storage)
    lease = lease_of(claimed)
    if write == "finish_task":
        await storage.start_task(lease, TaskStart(address=address(), attempt=1, worker_id=WORKER))
    first = await WORKER_WRITES[write](storage, lease)
    after_first = await snapshot(storage, claimed.run.id)

    again = await WORKER_WRITES[write](storage, lease)

    assert again == first
    assert await snapshot(storage, claimed.run.id) == after_first


_TASK_ENDS = (EventKind.TASK_FAILED, EventKind.TASK_COMPLETED)


async def test_a_task_end_sent_again_is_not_mistaken_for_the_next_attempt(
    storage: Storage,
) -> None:
    lease = lease_of(await running(storage))
    await storage.finish_task(lease, task_end(TaskOutcome.RETRYING, attempt=1))
    await storage.finish_task(lease, task_end(TaskOutcome.RETRYING, attempt=1))
    await storage.finish_task(lease, task_end(TaskOutcome.COMPLETED, attempt=2, result="ok"))
    await storage.finish_task(lease, task_end(TaskOutcome.COMPLETED, attempt=2, result="ok"))

    history = await storage.get_history(lease.run_id)
    ends = [(e.kind, e.data["attempt"]) for e in history if e.kind in _TASK_ENDS]
    assert ends == [(EventKind.TASK_FAILED, 1), (EventKind.TASK_COMPLETED, 2)]


async def test_another_end_after_the_run_ended_is_still_refused(storage: Storage) -> None:
    lease = lease_of(await running(storage))
    await storage.finish(lease, RunOutcome(state=RunState.COMPLETED, result_json="1"))
    with pytest.raises(LeaseLostError):
        await WORKER_WRITES["fail"](storage, lease)
    with pytest.raises(LeaseLostError):
        await WORKER_WRITES["suspend"](storage, lease)
    assert (await status(storage, lease.run_id)).state is RunState.COMPLETED


@pytest.mark.parametrize("write", sorted(WORKER_WRITES))
async def test_unknown_run_is_a_lost_lease(storage: Storage, write: str) -> None:
    with pytest.raises(LeaseLostError):
        await WORKER_WRITES[write](storage, Lease(run_id=RunId("f" * 26), revision=1))


@pytest.mark.parametrize("write", sorted(STATE_CHANGES))
@pytest.mark.parametrize(
    "state",
    [RunState.PENDING, RunState.WAITING, RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED],
)
async def test_state_machine_decides_with_a_current_revision(
    storage: Storage, state: RunState, write: str
) -> None:
    """No worker holds a current revision of a run that is not running; if one did, the state
    machine alone would decide: what it forbids is refused and changes nothing."""
    lease = await in_state(storage, state)
    before = await snapshot(storage, lease.run_id)
    action = STATE_CHANGES[write]
    if allowed(action, state):
        await WORKER_WRITES[write](storage, lease)
        assert (await status(storage, lease.run_id)).state is TARGET[action]
        return
    with pytest.raises(IllegalTransitionError) as caught:
        await WORKER_WRITES[write](storage, lease)
    assert caught.value.run_id == lease.run_id
    assert caught.value.current == state.value
    assert caught.value.action == action.value
    assert await snapshot(storage, lease.run_id) == before


@pytest.mark.parametrize("write", ["start_task", "finish_task"])
@pytest.mark.parametrize(
    "state",
    [RunState.PENDING, RunState.WAITING, RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED],
)
async def test_task_writes_need_a_running_run(
    storage: Storage, state: RunState, write: str
) -> None:
    lease = await in_state(storage, state)
    before = await snapshot(storage, lease.run_id)
    with pytest.raises(LeaseLostError):
        await WORKER_WRITES[write](storage, lease)
    assert await snapshot(storage, lease.run_id) == before


@pytest.mark.parametrize(
    "state",
    [RunState.PENDING, RunState.WAITING, RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED],
)
async def test_only_pending_runs_are_claimed_and_only_running_ones_heartbeat(
    storage: Storage, state: RunState
) -> None:
    lease = await in_state(storage, state)
    before = await status(storage, lease.run_id)
    key = WorkflowKey(name=before.workflow, version=before.version)
    reply = await storage.heartbeat(WORKER, [lease], LEASE_MS)
    assert reply.lost == (lease.run_id,)
    claimed = await storage.claim(WORKER, [key], 10, LEASE_MS)
    assert [c.run.id for c in claimed] == ([lease.run_id] if state is RunState.PENDING else [])


async def test_a_failing_write_does_not_undo_the_others(storage: Storage) -> None:
    claimed = await running(storage)
    lease = lease_of(claimed)
    stale = Lease(run_id=claimed.run.id, revision=claimed.revision - 1)
    key = fresh_key()
    starts = [
        storage.start_task(lease, TaskStart(address=address(f"t{i}"), attempt=1, worker_id=WORKER))
        for i in range(30)
    ]
    enqueues = [storage.enqueue(new_run({"i": i}, key=key)) for i in range(20)]
    bad = storage.start_task(stale, TaskStart(address=address("x"), attempt=1, worker_id=WORKER))
    conflict = storage.enqueue(new_run({"other": 1}, key=KEY, idempotency_key="taken"))
    await storage.enqueue(new_run({"first": 1}, key=KEY, idempotency_key="taken"))

    results = await asyncio.gather(*starts[:15], bad, *enqueues, conflict, *starts[15:],
                                   return_exceptions=True)  # fmt: skip
    errors = [result for result in results if isinstance(result, BaseException)]
    assert len(errors) == 2
    assert any(isinstance(error, LeaseLostError) for error in errors)
    assert any(isinstance(error, IdempotencyConflictError) for error in errors)
    history = await storage.get_history(claimed.run.id)
    assert kinds(history).count(EventKind.TASK_STARTED) == 30
    assert len(await storage.list_runs(workflow=key.name)) == 20


# --- heartbeat ----------------------------------------------------------------------------------


async def test_heartbeat_extends_held_leases(storage: Storage, clock: FakeClock) -> None:
    held = await running(storage)
    lost = await running(storage)
    await storage.release(lease_of(lost))
    await clock.advance(LEASE_MS - 1)

    reply = await storage.heartbeat(WORKER, [lease_of(held), lease_of(lost)], LEASE_MS)
    assert reply.lost == (lost.run.id,)
    assert reply.cancel_requested == ()
    run = await status(storage, held.run.id)
    assert run.lease_expires_at_ms == clock.now_ms() + LEASE_MS
    assert run.revision == held.revision  # a heartbeat keeps the lease, it does not renew it

    await clock.advance(LEASE_MS - 1)
    report = await storage.fire_timers(max_recovery_attempts=3)
    assert report.expired == () and report.ended == ()
    assert report.next_due_ms == clock.now_ms() + 1


async def test_heartbeat_reports_cancel_requests(storage: Storage) -> None:
    first, second = await running(storage), await running(storage)
    await storage.cancel(second.run.id, "stop")
    reply = await storage.heartbeat(WORKER, [lease_of(first), lease_of(second)], LEASE_MS)
    assert reply.lost == ()
    assert reply.cancel_requested == (second.run.id,)
    assert await storage.heartbeat(WORKER, [], LEASE_MS) == type(reply)()


# --- cancel -------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [RunState.PENDING, RunState.WAITING])
async def test_cancel_a_pending_or_waiting_run(
    storage: Storage, clock: FakeClock, state: RunState
) -> None:
    lease = await in_state(storage, state)
    cancelled = await storage.cancel(lease.run_id, "no longer needed")
    assert cancelled == await storage.get_run(lease.run_id)
    assert cancelled.state is RunState.CANCELLED
    assert cancelled.cancel_reason == "no longer needed"
    assert cancelled.revision == lease.revision + 1
    assert cancelled.wait is None
    history = await storage.get_history(lease.run_id)
    assert history[-1].kind is EventKind.CANCELLED
    assert history[-1].state is RunState.CANCELLED
    assert history[-1].data == {"reason": "no longer needed"}
    await clock.advance(120_000)
    report = await storage.fire_timers(max_recovery_attempts=3)
    assert lease.run_id not in report.woken


async def test_cancel_a_running_run_flags_it_once(storage: Storage) -> None:
    claimed = await running(storage)
    flagged = await storage.cancel(claimed.run.id, "stop")
    assert flagged.state is RunState.RUNNING
    assert flagged.cancel_requested
    assert flagged.cancel_reason == "stop"
    assert flagged.revision == claimed.revision  # the worker keeps its lease
    again = await storage.cancel(claimed.run.id, "stop again")
    assert again == flagged
    history = await storage.get_history(claimed.run.id)
    assert kinds(history).count(EventKind.CANCEL_REQUESTED) == 1
    assert history[-1].state is RunState.RUNNING
    assert history[-1].data == {"reason": "stop"}

    lease = lease_of(claimed)
    assert await storage.finish_task(lease, task_end()) is True
    ended = await storage.finish(lease, RunOutcome(state=RunState.CANCELLED))
    assert ended.state is RunState.CANCELLED
    assert ended.cancel_reason == "stop"


@pytest.mark.parametrize("state", [RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED])
async def test_cancel_a_final_run_changes_nothing(storage: Storage, state: RunState) -> None:
    lease = await in_state(storage, state)
    before = await snapshot(storage, lease.run_id)
    assert await storage.cancel(lease.run_id, "late") == before[0]
    assert await snapshot(storage, lease.run_id) == before


async def test_cancel_an_unknown_run(storage: Storage) -> None:
    with pytest.raises(RunNotFoundError):
        await storage.cancel(RunId("0" * 26), None)


# --- lease expiry -------------------------------------------------------------------------------


async def test_expired_lease_sends_the_run_back(storage: Storage, clock: FakeClock) -> None:
    claimed = await running(storage)
    lease = lease_of(claimed)
    done, interrupted = address("done"), address("interrupted")
    await storage.start_task(lease, TaskStart(address=done, attempt=1, worker_id=WORKER))
    await storage.finish_task(lease, task_end(at=done))
    await storage.start_task(lease, TaskStart(address=interrupted, attempt=1, worker_id=WORKER))

    await clock.advance(LEASE_MS - 1)
    assert (await storage.fire_timers(max_recovery_attempts=3)).expired == ()
    await clock.advance(1)
    report = await storage.fire_timers(max_recovery_attempts=3)
    assert report.expired == (claimed.run.id,)
    assert report.ended == () and report.woken == ()
    assert report.next_due_ms is None

    run, history = await snapshot(storage, claimed.run.id)
    assert run.state is RunState.PENDING
    assert run.recovery_attempts == 1
    assert run.revision == claimed.revision + 1
    assert run.worker_id is None and run.lease_expires_at_ms is None
    event = history[-1]
    assert event.kind is EventKind.LEASE_EXPIRED
    assert event.state is RunState.PENDING
    assert event.data["worker_id"] == WORKER
    assert event.data["recovery_attempts"] == 1
    assert [task["task"] for task in event.data["interrupted"]] == ["interrupted"]

    with pytest.raises(LeaseLostError):
        await storage.finish(lease, RunOutcome(state=RunState.COMPLETED))
    assert (await storage.heartbeat(WORKER, [lease], LEASE_MS)).lost == (claimed.run.id,)
    key = WorkflowKey(name=run.workflow, version=run.version)
    again = await claim_only(storage, key, OTHER_WORKER)
    assert again.run.attempt == 2
    assert again.run.recovery_attempts == 1
    assert [record.address for record in again.tasks] == [done]


async def test_expired_lease_past_the_recovery_limit_fails_the_run(
    storage: Storage, clock: FakeClock
) -> None:
    key = fresh_key()
    run_id = (await storage.enqueue(new_run(key=key))).id
    for losses in (1, 2):
        await claim_only(storage, key)
        await clock.advance(LEASE_MS)
        report = await storage.fire_timers(max_recovery_attempts=2)
        assert report.expired == (run_id,)
        assert (await status(storage, run_id)).recovery_attempts == losses

    await claim_only(storage, key)
    await clock.advance(LEASE_MS)
    report = await storage.fire_timers(max_recovery_attempts=2)
    assert report.expired == ()
    assert report.ended == (run_id,)
    run, history = await snapshot(storage, run_id)
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert "RecoveryLimitError" in run.error.type
    assert "3 time" in run.error.message
    assert "max_recovery_attempts is 2" in run.error.message
    assert history[-1].kind is EventKind.FAILED
    assert history[-1].state is RunState.FAILED
    assert await storage.claim(WORKER, [key], 10, LEASE_MS) == []


async def test_expired_lease_of_a_run_asked_to_cancel_cancels_it(
    storage: Storage, clock: FakeClock
) -> None:
    claimed = await running(storage)
    await storage.cancel(claimed.run.id, "stop")
    await clock.advance(LEASE_MS)
    report = await storage.fire_timers(max_recovery_attempts=3)
    assert report.ended == (claimed.run.id,)
    assert report.expired == ()
    run, history = await snapshot(storage, claimed.run.id)
    assert run.state is RunState.CANCELLED
    assert run.cancel_reason == "stop"
    assert history[-1].kind is EventKind.CANCELLED
    assert history[-1].state is RunState.CANCELLED


async def test_zero_recovery_attempts_fails_at_the_first_loss(
    storage: Storage, clock: FakeClock
) -> None:
    claimed = await running(storage)
    await clock.advance(LEASE_MS)
    report = await storage.fire_timers(max_recovery_attempts=0)
    assert report.ended == (claimed.run.id,)
    assert (await status(storage, claimed.run.id)).state is RunState.FAILED


async def test_fire_timers_respects_its_limit_and_reports_the_next_due(
    storage: Storage, clock: FakeClock
) -> None:
    leases = [lease_of(await running(storage)) for _ in range(3)]
    for offset, lease in enumerate(leases):
        wait = WaitInfo(kind=WaitKind.RETRY, until_ms=clock.now_ms() + 1_000 + offset)
        await storage.suspend(lease, wait)
    late = await running(storage)
    await clock.advance(2_000)
    first = await storage.fire_timers(max_recovery_attempts=3, limit=2)
    assert first.woken == (leases[0].run_id, leases[1].run_id)
    assert first.next_due_ms is not None and first.next_due_ms <= clock.now_ms()
    second = await storage.fire_timers(max_recovery_attempts=3, limit=2)
    assert second.woken == (leases[2].run_id,)
    assert second.next_due_ms == late.run.lease_expires_at_ms
    assert (await storage.fire_timers(max_recovery_attempts=3)).woken == ()


# --- history ------------------------------------------------------------------------------------


async def test_history_of_a_whole_run(storage: Storage, clock: FakeClock) -> None:
    claimed = await running(storage)
    lease = lease_of(claimed)
    at = address()
    await storage.start_task(lease, TaskStart(address=at, attempt=1, worker_id=WORKER))
    await storage.finish_task(lease, task_end(TaskOutcome.RETRYING, at=at))
    wait = WaitInfo(kind=WaitKind.RETRY, until_ms=clock.now_ms() + 1_000, detail="fetch")
    await storage.suspend(lease, wait)
    await clock.advance(1_000)
    await storage.fire_timers(max_recovery_attempts=3)
    key = WorkflowKey(name=claimed.run.workflow, version=claimed.run.version)
    lease = lease_of(await claim_only(storage, key))
    await storage.start_task(lease, TaskStart(address=at, attempt=2, worker_id=WORKER))
    await storage.finish_task(lease, task_end(at=at, attempt=2))
    await storage.finish(lease, RunOutcome(state=RunState.COMPLETED, result_json="1"))

    history = await storage.get_history(claimed.run.id)
    assert [(event.kind, event.state) for event in history] == [
        (EventKind.ENQUEUED, RunState.PENDING),
        (EventKind.CLAIMED, RunState.RUNNING),
        (EventKind.TASK_STARTED, RunState.RUNNING),
        (EventKind.TASK_FAILED, RunState.RUNNING),
        (EventKind.SUSPENDED, RunState.WAITING),
        (EventKind.WOKEN, RunState.PENDING),
        (EventKind.CLAIMED, RunState.RUNNING),
        (EventKind.TASK_STARTED, RunState.RUNNING),
        (EventKind.TASK_COMPLETED, RunState.RUNNING),
        (EventKind.COMPLETED, RunState.COMPLETED),
    ]
    seqs = [event.seq for event in history]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert history[-1].at_ms == clock.now_ms()


# --- workers ------------------------------------------------------------------------------------


async def test_register_worker_is_repeatable(storage: Storage) -> None:
    await storage.register_worker(WORKER, served(KEY, fresh_key()), 1_000)
    await storage.register_worker(WORKER, served(KEY), 1_000)
    await storage.register_worker(OTHER_WORKER, [], 1_000)


async def test_workers_are_alive_until_their_lease_passes(
    storage: Storage, clock: FakeClock
) -> None:
    await storage.register_worker(WORKER, served(KEY), 1_000)
    await storage.register_worker(OTHER_WORKER, [], 5_000)

    first, _ = sorted(await storage.list_workers(), key=lambda w: w.id)
    assert (first.id, first.workflows, first.alive) == (WORKER, (KEY,), True)
    assert first.alive_until_ms == clock.now_ms() + 1_000

    await clock.advance(1_000)
    alive = {w.id: w.alive for w in await storage.list_workers()}
    assert alive == {WORKER: False, OTHER_WORKER: True}

    await storage.heartbeat(WORKER, [], 1_000)  # a heartbeat brings it back
    assert {w.id: w.alive for w in await storage.list_workers()}[WORKER]

    await storage.unregister_worker(WORKER)
    assert not {w.id: w.alive for w in await storage.list_workers()}[WORKER]


async def test_list_workflows_counts_runs_and_live_workers(
    storage: Storage, clock: FakeClock
) -> None:
    key = fresh_key()
    await storage.enqueue(NewRun(workflow=key.name, version=key.version, payload_json="1"))
    await storage.enqueue(NewRun(workflow=key.name, version=key.version, payload_json="2"))
    await storage.register_worker(WORKER, served(key), 1_000)

    summaries = {(s.name, s.version): s for s in await storage.list_workflows()}

    summary = summaries[(key.name, key.version)]
    assert summary.runs == {"pending": 2}
    assert summary.live_workers == (WORKER,)
    await clock.advance(1_000)
    summaries = {(s.name, s.version): s for s in await storage.list_workflows()}
    assert summaries[(key.name, key.version)].live_workers == ()


async def test_a_task_end_can_carry_its_start(storage: Storage) -> None:
    """A quick task's start is written with its end: both events, start first."""
    key = fresh_key()
    await enqueue(storage, key)
    claimed = await claim_only(storage, key)
    end = replace(task_end(result="done"), start_reported=False)

    await storage.finish_task(lease_of(claimed), end)

    history = await storage.get_history(claimed.run.id)
    started, completed = history[-2:]
    assert (started.kind, completed.kind) == (EventKind.TASK_STARTED, EventKind.TASK_COMPLETED)
    assert started.data["task"] == "fetch" and started.data["attempt"] == 1
    assert started.data["worker_id"] == WORKER
    assert started.at_ms <= completed.at_ms


async def test_served_versions_are_those_a_worker_registered(storage: Storage) -> None:
    key = fresh_key()
    assert await storage.served_versions(key.name) == []
    await storage.enqueue(NewRun(workflow=key.name, version="2.0.0", payload_json="1"))
    schema = dumps({"type": "object"})
    first = ServedVersion(name=key.name, version="1.0.0", payload_schema_json=schema)
    await storage.register_worker(WORKER, [first, ServedVersion(name=key.name, version="3")], 1)

    # Enqueued only (allow_unknown), 2.0.0 is not served: listed with its runs, not known.
    assert await storage.served_versions(key.name) == [
        first,
        ServedVersion(name=key.name, version="3"),
    ]
    assert (key.name, "2.0.0") in {(s.name, s.version) for s in await storage.list_workflows()}

    # A later registration of the same version replaces its schema; 2.0.0 becomes known.
    changed = ServedVersion(name=key.name, version="1.0.0", payload_schema_json=dumps({}))
    await storage.register_worker(OTHER_WORKER, [changed, replace(first, version="2.0.0")], 1)
    assert [
        (s.version, s.payload_schema_json) for s in await storage.served_versions(key.name)
    ] == [
        ("1.0.0", dumps({})),
        ("2.0.0", schema),
        ("3", None),
    ]


# --- events -------------------------------------------------------------------------------------


def new_event(
    run_id: RunId, name: str = "approved", data: JSONValue = None, key: str | None = None
) -> NewEvent:
    return NewEvent(run_id=run_id, name=name, data_json=dumps(data), idempotency_key=key)


def event_wait(name: str = "approved", until_ms: int | None = None) -> WaitInfo:
    return WaitInfo(kind=WaitKind.EVENT, until_ms=until_ms, detail=name)


async def test_events_are_stored_in_send_order_and_read_by_name(storage: Storage) -> None:
    run = await enqueue(storage)
    first = await storage.send_event(new_event(run.id, data=1))
    await storage.send_event(new_event(run.id, "other", data=2))
    third = await storage.send_event(new_event(run.id, data=3))

    assert first.created and third.created and third.seq > first.seq
    assert not first.woken  # the run is pending: nothing to wake
    assert await storage.next_event(run.id, "approved", 0) == RunEvent(
        seq=first.seq, name="approved", data_json="1"
    )
    found = await storage.next_event(run.id, "approved", first.seq)
    assert found is not None and (found.seq, found.data_json) == (third.seq, "3")
    assert await storage.next_event(run.id, "approved", third.seq) is None
    history = await storage.get_history(run.id)
    assert kinds(history)[-3:] == [EventKind.EVENT_SENT] * 3
    assert history[-1].data == {"name": "approved", "seq": third.seq}
    assert history[-1].state is RunState.PENDING


async def test_an_event_with_a_known_key_is_stored_once(storage: Storage) -> None:
    run = await enqueue(storage)
    first = await storage.send_event(new_event(run.id, data={"ok": True}, key="k"))
    again = await storage.send_event(new_event(run.id, data={"ok": True}, key="k"))
    other_name = await storage.send_event(new_event(run.id, "other", data=1, key="k"))

    assert first.created and not again.created and again.seq == first.seq
    assert other_name.created  # keys are per event name
    with pytest.raises(EventRejectedError) as caught:
        await storage.send_event(new_event(run.id, data={"ok": False}, key="k"))
    assert caught.value.idempotency_key == "k"
    first_seq = await storage.next_event(run.id, "approved", 0)
    assert (
        first_seq is not None
        and await storage.next_event(run.id, "approved", first_seq.seq) is None
    )


async def test_an_event_for_a_final_or_unknown_run_is_refused(storage: Storage) -> None:
    lease = await in_state(storage, RunState.COMPLETED)
    with pytest.raises(EventRejectedError, match="completed"):
        await storage.send_event(new_event(lease.run_id))
    assert await storage.next_event(lease.run_id, "approved", 0) is None
    with pytest.raises(RunNotFoundError):
        await storage.send_event(new_event(RunId("no-such-run")))


async def test_an_event_wakes_a_run_waiting_for_events(storage: Storage) -> None:
    claimed = await running(storage)
    assert await storage.suspend(lease_of(claimed), event_wait()) is False
    run = await status(storage, claimed.run.id)
    assert run.state is RunState.WAITING and run.wait == event_wait()
    # A wait without a timeout has no due time.
    assert (await storage.fire_timers(max_recovery_attempts=3)).next_due_ms is None

    sent = await storage.send_event(new_event(claimed.run.id))

    assert sent.woken
    assert sent.workflow == WorkflowKey(name=run.workflow, version=run.version)
    run, history = await snapshot(storage, claimed.run.id)
    assert run.state is RunState.PENDING and run.wait is None
    assert kinds(history)[-2:] == [EventKind.EVENT_SENT, EventKind.WOKEN]
    assert history[-2].state is RunState.WAITING


async def test_an_event_does_not_wake_a_run_waiting_for_something_else(
    storage: Storage, clock: FakeClock
) -> None:
    claimed = await running(storage)
    wait = WaitInfo(kind=WaitKind.SLEEP, until_ms=clock.now_ms() + 5_000, detail="nap")
    await storage.suspend(lease_of(claimed), wait)
    sent = await storage.send_event(new_event(claimed.run.id))
    assert not sent.woken
    assert (await status(storage, claimed.run.id)).state is RunState.WAITING


async def test_a_wait_with_a_timeout_is_woken_by_the_timers(
    storage: Storage, clock: FakeClock
) -> None:
    claimed = await running(storage)
    until = clock.now_ms() + 5_000
    await storage.suspend(lease_of(claimed), event_wait(until_ms=until))
    assert (await storage.fire_timers(max_recovery_attempts=3)).next_due_ms == until
    await clock.advance(5_000)
    assert (await storage.fire_timers(max_recovery_attempts=3)).woken == (claimed.run.id,)


async def test_a_suspend_for_an_event_already_sent_wakes_the_run_at_once(
    storage: Storage,
) -> None:
    """An event sent while the run ran, not yet received: waiting for it would wait forever."""
    claimed = await running(storage)
    lease = lease_of(claimed)
    await storage.send_event(new_event(claimed.run.id, data=1))
    # One event of the name received already (recorded), the second one not.
    received = TaskAddress(task=EVENT_TASK_PREFIX + "approved", digest=EVENT_RECEIVED_DIGEST)
    await storage.finish_task(lease, task_end(at=received, result={"seq": 1, "data": 1}))
    await storage.send_event(new_event(claimed.run.id, data=2))

    assert await storage.suspend(lease, event_wait()) is True

    run, history = await snapshot(storage, claimed.run.id)
    assert run.state is RunState.PENDING
    assert kinds(history)[-2:] == [EventKind.SUSPENDED, EventKind.WOKEN]


async def test_a_suspend_for_events_all_received_waits(storage: Storage) -> None:
    claimed = await running(storage)
    lease = lease_of(claimed)
    await storage.send_event(new_event(claimed.run.id, data=1))
    received = TaskAddress(task=EVENT_TASK_PREFIX + "approved", digest=EVENT_RECEIVED_DIGEST)
    await storage.finish_task(lease, task_end(at=received, result={"seq": 1, "data": 1}))

    assert await storage.suspend(lease, event_wait()) is False
    assert (await status(storage, claimed.run.id)).state is RunState.WAITING
