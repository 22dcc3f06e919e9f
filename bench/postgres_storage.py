"""Throughput and latency of `PostgresStorage` on one event loop.

The same shape as bench/sqlite_storage.py: a workflow is what the engine asks of storage for a
run with two tasks: enqueue, claim (in batches), 2 x (start_task + finish_task), finish; up to
`--concurrency` workflows execute at once. Each run uses a fresh database, dropped at the end.

Run: `python bench/postgres_storage.py [--dsn postgresql://postgres@127.0.0.1/postgres]`
(the DSN names a database where the benchmark may create its own). Transactions are counted at
the driver (bench/_pg_stats.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from _pg_stats import counting_pg_transactions

from aiki._core.ids import WorkerId
from aiki._core.models import (
    ClaimedRun,
    Lease,
    NewRun,
    RunOutcome,
    TaskAddress,
    TaskEnd,
    TaskOutcome,
    TaskStart,
    WorkflowKey,
)
from aiki._core.states import RunState
from aiki.storage.postgres import PostgresStorage

KEY = WorkflowKey(name="bench", version="1")
WORKER = WorkerId("bench-worker")


async def _execute(storage: PostgresStorage, claimed: ClaimedRun, quick: bool) -> None:
    lease = Lease(run_id=claimed.run.id, revision=claimed.revision)
    for index in range(2):
        address = TaskAddress(task=f"task-{index}", digest="0" * 64)
        if not quick:
            start = TaskStart(address=address, attempt=1, worker_id=WORKER)
            await storage.start_task(lease, start)
        await storage.finish_task(
            lease,
            TaskEnd(
                address=address,
                attempt=1,
                worker_id=WORKER,
                outcome=TaskOutcome.COMPLETED,
                duration_ms=1,
                result_json='{"ok":true}',
                start_reported=not quick,  # quick: the end carries the start, one write
            ),
        )
    await storage.finish(lease, RunOutcome(state=RunState.COMPLETED, result_json='{"done":1}'))


async def workflows(
    storage: PostgresStorage,
    count: int,
    producers: int,
    batch: int,
    concurrency: int,
    quick: bool,
) -> float:
    done = asyncio.Event()
    finished = 0
    slots = asyncio.Semaphore(concurrency)
    claims = empty = 0

    async def produce(share: int) -> None:
        for i in range(share):
            await storage.enqueue(
                NewRun(workflow="bench", version="1", payload_json=f'{{"i":{i}}}')
            )

    async def run_one(claimed: ClaimedRun) -> None:
        nonlocal finished
        try:
            await _execute(storage, claimed, quick)
        finally:
            slots.release()
        finished += 1
        if finished == count:
            done.set()

    async def consume(group: asyncio.TaskGroup) -> None:
        while not done.is_set():
            await slots.acquire()  # claim only what can execute now, as a worker does
            free = 1
            while free < batch and not slots.locked():
                await slots.acquire()
                free += 1
            claimed = await storage.claim(WORKER, [KEY], free, 60_000)
            nonlocal claims, empty
            claims += 1
            empty += not claimed
            for run in claimed:
                group.create_task(run_one(run))
            for _ in range(free - len(claimed)):
                slots.release()
            if not claimed:
                await asyncio.sleep(0.001)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for n in range(producers):
            group.create_task(produce(count // producers + (n < count % producers)))
        consumer = group.create_task(consume(group))
        await done.wait()
        consumer.cancel()
    elapsed = time.perf_counter() - start
    print(f"claims: {claims} ({empty} empty), {count / max(claims - empty, 1):.1f} runs a claim")
    return elapsed


async def latency(storage: PostgresStorage, count: int) -> list[float]:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        await storage.enqueue(NewRun(workflow="lat", version="1", payload_json=f'{{"i":{i}}}'))
        samples.append(time.perf_counter() - start)
    return samples


async def preload(dsn: str, finished: int, pending: int) -> None:
    """Fill the tables as a busy installation's: `finished` completed runs (each with three
    history events) and `pending` runs of another workflow, none of which the benchmark takes."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO runs (id, workflow, version, state, payload, result, attempt, revision,
                              last_seq, created_at, updated_at)
            SELECT lpad(to_hex(g), 26, '0'), 'old', '1', 'completed', '{}', '1', 1, 2, 3, 0, 0
            FROM generate_series(1, $1::int) AS g;
            """,
            finished,
        )
        await conn.execute(
            """
            INSERT INTO history (run_id, seq, at, kind, state)
            SELECT lpad(to_hex(g), 26, '0'), seq, 0, kind, state
            FROM generate_series(1, $1::int) AS g,
                 (VALUES (1, 'run_enqueued', 'pending'), (2, 'run_claimed', 'running'),
                         (3, 'run_completed', 'completed')) AS e(seq, kind, state);
            """,
            finished,
        )
        await conn.execute(
            """
            INSERT INTO runs (id, workflow, version, state, payload, last_seq, created_at,
                              updated_at)
            SELECT 'p' || lpad(to_hex(g), 25, '0'), 'backlog', '1', 'pending', '{}', 1, 0, 0
            FROM generate_series(1, $1::int) AS g;
            """,
            pending,
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def idle_costs(storage: PostgresStorage) -> None:
    """One claim that finds nothing and one fire_timers pass with nothing due, timed."""
    for name, call in (
        ("claim (nothing to take)", lambda: storage.claim(WORKER, [KEY], 16, 60_000)),
        ("fire_timers (nothing due)", lambda: storage.fire_timers(max_recovery_attempts=3)),
        ("list_runs(state=pending)", lambda: storage.list_runs(state=RunState.PENDING)),
    ):
        samples = []
        for _ in range(200):
            start = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - start)
        print(f"{name}: median {statistics.median(samples) * 1e6:.0f} us")


def _with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "AIKI_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1/postgres"
        ),
    )
    parser.add_argument("--workflows", type=int, default=5_000)
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pool", type=int, default=16, help="the pool's max_size")
    parser.add_argument(
        "--quick", action="store_true", help="tasks end before their start is written"
    )
    parser.add_argument("--finished", type=int, default=0, help="completed runs preloaded")
    parser.add_argument("--pending", type=int, default=0, help="other pending runs preloaded")
    args = parser.parse_args()
    name = f"bench_storage_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = _with_database(args.dsn, name)
        if args.finished or args.pending:
            async with PostgresStorage(dsn):  # applies the migrations
                pass
            start = time.perf_counter()
            await preload(dsn, args.finished, args.pending)
            print(
                f"preloaded {args.finished:,} completed and {args.pending:,} pending runs "
                f"in {time.perf_counter() - start:.1f} s"
            )
        async with PostgresStorage(dsn, min_size=args.pool, max_size=args.pool) as storage:
            samples = await latency(storage, 1_000)
            print(
                f"single enqueue latency: median {statistics.median(samples) * 1e6:.0f} us, "
                f"p99 {sorted(samples)[int(len(samples) * 0.99)] * 1e6:.0f} us"
            )
            await idle_costs(storage)
            cpu = time.process_time()
            with counting_pg_transactions() as stats:
                elapsed = await workflows(
                    storage,
                    args.workflows,
                    args.producers,
                    args.batch,
                    args.concurrency,
                    args.quick,
                )
            cpu = time.process_time() - cpu
            # enqueue, 2 x (start, finish task), finish; claims extra. Quick: no starts.
            ops = args.workflows * (4 if args.quick else 6)
            print(
                f"{args.workflows} workflows in {elapsed:.2f} s "
                f"(concurrency {args.concurrency}, pool {args.pool}"
                f"{', quick tasks' if args.quick else ''}): "
                f"{args.workflows / elapsed:,.0f} workflows/s, {ops / elapsed:,.0f} ops/s, "
                f"{cpu / args.workflows * 1e3:.2f} ms of this process's CPU per workflow, "
                f"{stats.transactions / args.workflows:.2f} transactions per workflow"
            )
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
