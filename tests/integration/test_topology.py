"""The production topology, for real: `aiki server` and `aiki worker` processes on PostgreSQL.

Several servers share one database (and a Redis, or LISTEN/NOTIFY) while hundreds of runs go
through, and a worker, a server, Redis or the database connections are lost on the way. The
workers serve `topology_workflows`, whose tasks log every call to a file, so the tests count
side effects as the outside world would see them and compare them with what storage recorded:
every run completes with the right result, recorded once, and no task whose result was
recorded runs again for that run. Heartbeats are short (300 ms, a 900 ms lease), so a lost
worker's runs move on within about a second.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio

import aiki
from _services import PostgresDatabase, RedisProcess, redis_namespace
from aiki._core.ids import RunId
from aiki._core.models import HistoryEvent, NewRun, RunStatus
from aiki.queue._keys import events_channel
from processes import Proc, Processes, Server, SideEffects

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

TASKS = ("square", "increment", "label")  # the tasks of topology_workflows' pipeline
TARGET = "topology_workflows:registry"
HEARTBEAT_MS = 300
CONCURRENCY = 10
ENQUEUE_CONCURRENCY = 16
CHECK_EVERY_S = 0.1  # how often a wait on hundreds of runs looks again
ALL_DONE_S = 30.0  # the longest any batch of runs here may take to complete
OUTAGE_S = 10.0  # how long Redis stays down


# --- runs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    """Runs of `pipeline` enqueued by a test: run id -> n."""

    runs: dict[RunId, int]
    effects: SideEffects

    def merge(self, other: Batch) -> Batch:
        return Batch({**self.runs, **other.runs}, self.effects)


def key(n: int) -> str:
    """The run's idempotency key, and its key in the side effects log."""
    return f"r{n}"


def expected(n: int) -> str:
    """What `pipeline` returns for n."""
    return f"{n}:{n * n + 1}"


async def enqueue_runs(
    clients: Sequence[aiki.Client], numbers: range, effects: SideEffects, *, sleep_ms: int = 0
) -> Batch:
    """Enqueue a run for each n of `numbers`, spread over the clients (and their servers).

    Each has an idempotency key, so the client may safely retry an enqueue whose reply it lost.
    """
    limit = asyncio.Semaphore(ENQUEUE_CONCURRENCY)

    async def one(n: int) -> tuple[RunId, int]:
        payload = {"key": key(n), "n": n, "log": str(effects.path), "sleep_ms": sleep_ms}
        new = NewRun(
            workflow="pipeline",
            version="1",
            payload_json=json.dumps(payload),
            idempotency_key=key(n),
        )
        async with limit:
            handle = await clients[n % len(clients)].enqueue(new)
        return handle.id, n

    return Batch(dict(await asyncio.gather(*(one(n) for n in numbers))), effects)


async def runs_through(procs: Processes, effects: SideEffects, count: int) -> None:
    """Wait until `count` runs have reached their last task."""
    await procs.until(lambda: effects.calls("label") >= count, f"{count} runs through", every=0.02)


async def states(client: aiki.Client) -> Counter[str]:
    runs = await client.list_runs(workflow="pipeline", limit=1000)
    return Counter(run.state.value for run in runs)


async def all_completed(
    procs: Processes, client: aiki.Client, count: int, *, timeout: float = ALL_DONE_S
) -> None:
    """Wait until `count` runs have completed; fail at once if one fails or is cancelled."""

    async def done() -> bool:
        seen = await states(client)
        bad = {state: n for state, n in seen.items() if state in ("failed", "cancelled")}
        if bad:
            raise AssertionError(f"runs ended badly: {dict(seen)}\n{procs.describe()}")
        return seen["completed"] == count

    await procs.until_async(done, f"{count} runs to complete", timeout=timeout, every=CHECK_EVERY_S)


@dataclass(frozen=True, slots=True)
class Audit:
    """What the exactly-once check saw, for assertions on how much the test disturbed."""

    reclaimed: int  # runs taken more than once (their worker or its server was lost)
    reran: int  # task executions that did not count: interrupted, then run again


async def check_exactly_once(procs: Processes, client: aiki.Client, batch: Batch) -> Audit:
    """Every run completed with its result, recorded once; no recorded task ran again.

    A task execution belongs to the claim it ran in (the run's attempt, logged by the task).
    Each task's result was recorded in one claim: it must have run exactly once in that claim,
    and never in a later one (the later claims replay it). Executions in earlier claims were
    cut short (their worker or its server lost) and legitimately do not count.
    """
    statuses = {r.id: r for r in await client.list_runs(workflow="pipeline", limit=1000)}
    assert set(statuses) == set(batch.runs), "exactly the runs enqueued, no more"
    wrong = {
        run_id: (status.state.value, status.result)
        for run_id, status in statuses.items()
        if status.state is not aiki.RunState.COMPLETED
        or status.result != expected(batch.runs[run_id])
    }
    assert not wrong, f"{len(wrong)} runs without their result: {wrong}\n{procs.describe()}"

    limit = asyncio.Semaphore(ENQUEUE_CONCURRENCY)

    async def history(run_id: RunId) -> tuple[RunId, list[HistoryEvent]]:
        async with limit:
            return run_id, await client.get_handle(run_id).get_history()

    histories = dict(await asyncio.gather(*(history(run_id) for run_id in batch.runs)))
    executions: dict[tuple[str, str], list[int]] = {}
    for run_key, task, _, run_attempt in batch.effects.lines():
        executions.setdefault((run_key, task), []).append(run_attempt)
    problems: list[str] = []
    reclaimed = reran = 0
    for run_id, n in batch.runs.items():
        events = histories[run_id]
        problems += _run_problems(run_id, key(n), events, statuses[run_id], executions)
        claims = sum(1 for e in events if e.kind.value == "run_claimed")
        reclaimed += claims > 1
        reran += sum(len(executions.get((key(n), task), [])) - 1 for task in TASKS)
    listed = "\n".join(problems[:50])
    assert not problems, f"{len(problems)} problems:\n{listed}\n{procs.describe()}"
    return Audit(reclaimed=reclaimed, reran=reran)


def _run_problems(
    run_id: RunId,
    run_key: str,
    events: list[HistoryEvent],
    status: RunStatus,
    executions: dict[tuple[str, str], list[int]],
) -> list[str]:
    kinds = [e.kind.value for e in events]
    problems = []
    if kinds.count("run_completed") != 1:
        problems.append(f"{run_id} ({run_key}): run_completed {kinds.count('run_completed')} times")
    claim = 0  # the run's attempt of the latest claim, walking the history in order
    recorded: dict[str, list[int]] = {}
    for event in events:
        if event.kind.value == "run_claimed":
            claim = int(event.data["attempt"])
        elif event.kind.value == "task_completed":
            recorded.setdefault(str(event.data["task"]), []).append(claim)
    if claim != status.attempt:
        problems.append(f"{run_id} ({run_key}): last claim {claim}, status says {status.attempt}")
    for task in TASKS:
        ran = executions.get((run_key, task), [])
        claims = recorded.get(task, [])
        if len(claims) != 1:
            problems.append(f"{run_id} ({run_key}): {task} recorded in claims {claims}")
            continue
        if ran.count(claims[0]) != 1 or any(attempt > claims[0] for attempt in ran):
            problems.append(
                f"{run_id} ({run_key}): {task} recorded in claim {claims[0]}, ran in claims {ran}"
            )
    return problems


# --- topologies ------------------------------------------------------------------------------


def start_servers(
    procs: Processes, database: PostgresDatabase, names: Sequence[str], queue: str | None = None
) -> list[Server]:
    """Start servers on the database side by side, then wait until each answers."""
    servers = [procs.server(database.dsn, queue=queue, name=name, wait=False) for name in names]
    for server in servers:
        procs.wait_healthy(server)
    return servers


def start_workers(
    procs: Processes, placement: Sequence[tuple[str, Server]], **options: Any
) -> list[Proc]:
    """Start workers (id, server) of the pipeline side by side; `ready()` each before use."""
    return [
        procs.worker(
            server,
            worker_id=worker_id,
            target=TARGET,
            concurrency=CONCURRENCY,
            heartbeat_ms=HEARTBEAT_MS,
            **options,
        )
        for worker_id, server in placement
    ]


async def reconnected(procs: Processes, client: aiki.Client, worker_id: str, since_ms: int) -> None:
    """Wait until the worker has been seen by storage after `since_ms` (wall clock)."""

    async def seen() -> bool:
        workers = await client.api.list_workers()
        return any(w.id == worker_id and w.last_seen_ms > since_ms for w in workers)

    await procs.until_async(seen, f"{worker_id} to be seen again", every=CHECK_EVERY_S)


async def subscribers(procs: Processes, redis_url: str, namespace: str, count: int) -> None:
    """Wait until `count` servers listen on the namespace's channel of this Redis."""
    channel = events_channel(namespace)
    async with redis.asyncio.Redis.from_url(redis_url) as conn:

        async def listening() -> bool:
            [(_, number)] = await conn.pubsub_numsub(channel)
            return int(number) == count

        await procs.until_async(listening, f"{count} servers to listen on Redis", every=0.05)


async def terminate_backends(database: PostgresDatabase) -> int:
    """Drop every connection to the database but this one; how many there were."""
    conn = await asyncpg.connect(database.dsn)
    try:
        dropped: int = await conn.fetchval(
            "SELECT count(*) FROM ("
            " SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t"
        )
        return dropped
    finally:
        await conn.close()


async def recovered(procs: Processes, clients: Sequence[aiki.Client]) -> None:
    """Wait until each server answers a read from storage again.

    A request that was using, or picks up, a pooled connection the database just dropped
    fails with `StorageError` (503, try again later): that is the window waited out here.
    """

    async def all_answer() -> bool:
        try:
            for client in clients:
                await states(client)
        except aiki.StorageError:
            return False
        return True

    await procs.until_async(all_answer, "the servers to answer again", every=0.05)


async def listeners(procs: Processes, database: PostgresDatabase, count: int) -> None:
    """Wait until `count` servers have their LISTEN connection to the database again."""
    conn = await asyncpg.connect(database.dsn)
    try:

        async def listening() -> bool:
            number: int = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'aiki-notify'"
            )
            return number == count

        await procs.until_async(listening, f"{count} servers to LISTEN again", every=0.05)
    finally:
        await conn.close()


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_500_runs_survive_a_killed_worker_and_a_killed_server(
    procs: Processes,
    effects: SideEffects,
    database: PostgresDatabase,
    redis: str,
    connect: Callable[[Server], Awaitable[aiki.Client]],
) -> None:
    queue = f"{redis}?namespace={redis_namespace()}"
    a, b = start_servers(procs, database, ["server-a", "server-b"], queue=queue)
    w1, w2, w3 = start_workers(procs, [("w1", a), ("w2", a), ("w3", b)])
    for worker in (w1, w2, w3):
        await procs.ready(worker)
    client_a, client_b = await connect(a), await connect(b)
    first = await enqueue_runs([client_a, client_b], range(350), effects, sleep_ms=10)

    # Mid-load: some runs through, the rest queued or in flight on every worker.
    await runs_through(procs, effects, 60)
    assert w1.kill() == -signal.SIGKILL
    assert b.proc.kill() == -signal.SIGKILL  # w3 loses its server
    killed_ms = int(time.time() * 1000)
    b = procs.server(database.dsn, port=b.port, queue=queue, name="server-b-restarted")
    (w1_again,) = start_workers(procs, [("w1-restarted", a)])
    await procs.ready(w1_again)
    await reconnected(procs, client_a, "w3", killed_ms)

    # More runs, through both servers (the restarted one too), for every worker to share.
    back = effects.mark()
    second = await enqueue_runs([client_b, client_a], range(350, 500), effects, sleep_ms=10)
    await all_completed(procs, client_b, 500)
    audit = await check_exactly_once(procs, client_a, first.merge(second))
    assert audit.reclaimed >= 1, "the kills interrupted runs in flight"
    assert w2.alive() and w3.alive(), "the other workers rode it out"
    after = Counter(pid for _, _, pid, _ in effects.lines()[back:])
    assert after[w1_again.pid] > 0, "the restarted worker takes work"
    assert after[w3.pid] > 0, "the worker of the restarted server takes work again"


@pytest.mark.redis
async def test_200_runs_survive_10_s_without_redis(
    procs: Processes,
    effects: SideEffects,
    database: PostgresDatabase,
    redis_process: RedisProcess,
    connect: Callable[[Server], Awaitable[aiki.Client]],
) -> None:
    namespace = redis_namespace()
    queue = f"{redis_process.url}?namespace={namespace}"
    a, b = start_servers(procs, database, ["server-a", "server-b"], queue=queue)
    wa, wb = start_workers(procs, [("wa", a), ("wb", b)])
    await procs.ready(wa)
    await procs.ready(wb)
    await subscribers(procs, redis_process.url, namespace, 2)
    client_a, client_b = await connect(a), await connect(b)
    first = await enqueue_runs([client_a, client_b], range(80), effects, sleep_ms=10)
    await runs_through(procs, effects, 20)

    redis_process.kill()
    back_at = time.monotonic() + OUTAGE_S
    # Redis is down: news goes nowhere, and pickup falls back to polling storage. Runs
    # enqueued on A now also reach B's worker only that way.
    outage = effects.mark()
    second = await enqueue_runs([client_a], range(80, 160), effects, sleep_ms=10)
    await all_completed(procs, client_b, 160, timeout=back_at - time.monotonic())
    assert time.monotonic() < back_at, "all this within the outage"
    restored = effects.mark()
    await asyncio.sleep(back_at - time.monotonic())  # the outage lasts as long as specified

    redis_process.start()
    await subscribers(procs, redis_process.url, namespace, 2)  # both servers listen again
    third = await enqueue_runs([client_b, client_a], range(160, 200), effects, sleep_ms=10)
    await all_completed(procs, client_a, 200)
    await check_exactly_once(procs, client_b, first.merge(second).merge(third))
    assert wa.alive() and wb.alive() and a.proc.alive() and b.proc.alive()
    during = Counter(pid for _, _, pid, _ in effects.lines()[outage:restored])
    assert during[wa.pid] > 0 and during[wb.pid] > 0, f"both workers worked on: {during}"


async def test_servers_recover_when_postgresql_drops_every_connection(
    procs: Processes,
    effects: SideEffects,
    database: PostgresDatabase,
    connect: Callable[[Server], Awaitable[aiki.Client]],
) -> None:
    # No --queue: the servers tell each other news by LISTEN/NOTIFY.
    a, b = start_servers(procs, database, ["server-a", "server-b"])
    workers = start_workers(procs, [("w1", a), ("w2", b), ("w3", b)])
    for worker in workers:
        await procs.ready(worker)
    client_a, client_b = await connect(a), await connect(b)
    batch = await enqueue_runs([client_a, client_b], range(200), effects, sleep_ms=10)

    for through in (40, 120):
        await runs_through(procs, effects, through)
        assert await terminate_backends(database) >= 4, "each server's pool and LISTEN"
        await recovered(procs, [client_a, client_b])
        await listeners(procs, database, 2)  # both servers LISTEN again
    await all_completed(procs, client_a, 200)
    await check_exactly_once(procs, client_b, batch)

    # Both servers answer, and each serves what the other was asked for.
    async with httpx.AsyncClient(timeout=5) as http:
        for server in (a, b):
            assert (await http.get(f"{server.url}/health")).status_code == 200
    more = await enqueue_runs([client_a, client_b], range(200, 210), effects)
    for run_id, n in more.runs.items():
        other = client_b if n % 2 == 0 else client_a  # enqueued on the other one
        assert await other.get_handle(run_id).wait_for_completion(timeout=10) == expected(n)
    assert all(proc.alive() for proc in [a.proc, b.proc, *workers])
