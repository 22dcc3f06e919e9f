"""Throughput and latency of `SqliteStorage` on one event loop.

A workflow here is what the engine asks of storage for a run with two tasks: enqueue, claim
(in batches), 2 x (start_task + finish_task), finish. Run: `python bench/sqlite_storage.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from aiki._core.clock import SystemClock
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
from aiki.storage.sqlite import SqliteStorage

KEY = WorkflowKey(name="bench", version="1")
WORKER = WorkerId("bench-worker")


async def _execute(storage: SqliteStorage, claimed: ClaimedRun) -> None:
    lease = Lease(run_id=claimed.run.id, revision=claimed.revision)
    for index in range(2):
        address = TaskAddress(task=f"task-{index}", digest="0" * 64)
        await storage.start_task(lease, TaskStart(address=address, attempt=1, worker_id=WORKER))
        await storage.finish_task(
            lease,
            TaskEnd(
                address=address,
                attempt=1,
                worker_id=WORKER,
                outcome=TaskOutcome.COMPLETED,
                duration_ms=1,
                result_json='{"ok":true}',
            ),
        )
    await storage.finish(lease, RunOutcome(state=RunState.COMPLETED, result_json='{"done":1}'))


async def workflows(storage: SqliteStorage, count: int, producers: int, batch: int) -> float:
    done = asyncio.Event()
    finished = 0

    async def produce(share: int) -> None:
        for i in range(share):
            await storage.enqueue(
                NewRun(workflow="bench", version="1", payload_json=f'{{"i":{i}}}')
            )

    async def run_one(claimed: ClaimedRun) -> None:
        nonlocal finished
        await _execute(storage, claimed)
        finished += 1
        if finished == count:
            done.set()

    async def consume(group: asyncio.TaskGroup) -> None:
        while not done.is_set():
            claimed = await storage.claim(WORKER, [KEY], batch, 60_000)
            for run in claimed:
                group.create_task(run_one(run))
            if not claimed:
                await asyncio.sleep(0.001)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(producers):
            group.create_task(produce(count // producers))
        for _ in range(2):
            group.create_task(consume(group))
    return time.perf_counter() - start


async def latency(storage: SqliteStorage, count: int) -> list[float]:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        await storage.enqueue(NewRun(workflow="lat", version="1", payload_json=f'{{"i":{i}}}'))
        samples.append(time.perf_counter() - start)
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--producers", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = ":memory:" if args.memory else str(Path(tmp) / "bench.db")
        async with SqliteStorage(path, clock=SystemClock()) as storage:
            samples = await latency(storage, 2_000)
            print(
                f"single enqueue latency: median {statistics.median(samples) * 1e6:.0f} us, "
                f"p99 {sorted(samples)[int(len(samples) * 0.99)] * 1e6:.0f} us"
            )
            elapsed = await workflows(storage, args.workflows, args.producers, args.batch)
            ops = args.workflows * 6  # enqueue, 2 x (start, finish task), finish; claims extra
            print(
                f"{args.workflows} workflows in {elapsed:.2f} s: "
                f"{args.workflows / elapsed:,.0f} workflows/s, {ops / elapsed:,.0f} ops/s"
            )


if __name__ == "__main__":
    asyncio.run(main())
