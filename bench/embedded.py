"""End-to-end throughput and latency of embedded Aiki: server, client and one worker, one process.

Each run is a workflow calling two no-op async tasks. A fresh SQLite file holds everything
(or, with `--storage postgresql://...`, a fresh PostgreSQL database created on that server and
dropped at the end); nothing listens on the network. Two phases:

- throughput: enqueue `--runs` runs concurrently, in chunks, while the worker executes them,
  and wait until every run has ended;
- latency: on the idle system, enqueue one run, wait for its result, repeat.

Run: `uv run python bench/embedded.py` (`--help` for the knobs; `--loop uvloop` needs
`uv run --with uvloop`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import math
import platform
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from _writer_stats import WriterStats, counting_transactions

import aiki

TASKS_PER_RUN = 2


@aiki.task(name="bench-step-a")
async def step_a(ctx: aiki.TaskContext[dict[str, Any]]) -> dict[str, Any]:
    return {}


@aiki.task(name="bench-step-b")
async def step_b(ctx: aiki.TaskContext[dict[str, Any]]) -> dict[str, Any]:
    return {}


@aiki.workflow(name="bench-two-tasks", version="1")
async def two_tasks(workflow_run: aiki.WorkflowRun[dict[str, Any]]) -> dict[str, Any]:
    i = workflow_run.payload["i"]
    await step_a.run(workflow_run, payload={"i": i})
    await step_b.run(workflow_run, payload={"i": i})
    return {"i": i}


# --- measuring --------------------------------------------------------------------------------


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Throughput:
    runs: int
    enqueue_s: float  # first enqueue call started -> last enqueue call returned
    elapsed_s: float  # first enqueue call started -> last run completed
    latencies_ms: list[float]
    not_completed: dict[str, int]  # state -> count, for runs that did not end `completed`
    writer: WriterStats
    cpu_s: float  # CPU time of the whole process (every thread) during the phase
    loop_cpu_s: float  # CPU time of the event loop's thread during the phase


@dataclass
class Latency:
    samples_ms: list[float]
    writer: WriterStats


Enqueue = Callable[[int], Awaitable[tuple[str, float]]]
Measured = tuple[dict[str, float], dict[str, float], float]


async def _storage_completion(
    client: aiki.Client, enqueue: Enqueue, ended_cb: Callable[[], None], args: Any
) -> Measured:
    """Enqueue everything, wait for the end, then read completion times back from storage.

    Returns (run id -> enqueue start, run id -> completion, both in wall-clock ms; enqueue end).
    `ended_cb` is called once the runs have ended, before the reads that check it.
    """
    starts: dict[str, float] = {}
    last_id = ""
    for low in range(0, args.runs, args.chunk):
        chunk = await asyncio.gather(
            *(enqueue(i) for i in range(low, min(low + args.chunk, args.runs)))
        )
        starts.update(chunk)
        last_id = chunk[-1][0]
    enqueue_end = time.time() * 1000
    # Claims go oldest first, so the last run enqueued is about the last to end: one waiter
    # there, then the stragglers, keeps observation from adding load while the worker runs.
    pending = [last_id]
    while pending:
        for run_id in pending:
            await _settled(client.get_handle(run_id).wait_for_completion(timeout=args.timeout))
        ended_cb()
        ended = await _statuses(client)
        pending = [run_id for run_id in starts if not ended[run_id].state.is_final]
    ends = {run_id: float(ended[run_id].updated_at_ms) for run_id in starts}
    return starts, ends, enqueue_end


async def _handle_completion(
    client: aiki.Client, enqueue: Enqueue, ended_cb: Callable[[], None], args: Any
) -> Measured:
    """Enqueue everything, each enqueue followed by a waiter on its handle; time the waiters."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    waiters: list[asyncio.Task[None]] = []

    async def wait(run_id: str) -> None:
        await _settled(client.get_handle(run_id).wait_for_completion(timeout=args.timeout))
        ends[run_id] = time.time() * 1000

    for low in range(0, args.runs, args.chunk):
        chunk = await asyncio.gather(
            *(enqueue(i) for i in range(low, min(low + args.chunk, args.runs)))
        )
        starts.update(chunk)
        waiters.extend(asyncio.create_task(wait(run_id)) for run_id, _ in chunk)
    enqueue_end = time.time() * 1000
    await asyncio.gather(*waiters)
    ended_cb()
    return starts, ends, enqueue_end


async def _settled(wait: Awaitable[Any]) -> None:
    """Await a run's end; a failed or cancelled run is counted afterwards, not raised."""
    with contextlib.suppress(aiki.WorkflowRunFailedError, aiki.WorkflowRunCancelledError):
        await wait


async def _statuses(client: aiki.Client) -> dict[str, aiki.RunStatus]:
    statuses: dict[str, aiki.RunStatus] = {}
    after: str | None = None
    while True:
        page = await client.list_runs(workflow=two_tasks.name, after=after, limit=1000)
        statuses.update((status.id, status) for status in page)
        if len(page) < 1000:
            return statuses
        after = page[-1].id


async def throughput(client: aiki.Client, stats: WriterStats, args: Any) -> Throughput:
    async def enqueue(i: int) -> tuple[str, float]:
        start = time.time() * 1000
        handle = await two_tasks.enqueue(client, payload={"i": i})
        return handle.id, start

    # CPU time and storage work are counted from the first enqueue until every run has ended,
    # not during the reads that check it afterwards.
    before = stats.checkpoint()
    cpu_start = (time.process_time(), time.thread_time())
    window: list[Any] = []

    def ended() -> None:
        window[:] = [time.process_time(), time.thread_time(), stats.since(before)]

    measure = _storage_completion if args.observe == "storage" else _handle_completion
    starts, ends, enqueue_end = await measure(client, enqueue, ended, args)
    cpu, loop_cpu = window[0] - cpu_start[0], window[1] - cpu_start[1]
    writer: WriterStats = window[2]
    first = min(starts.values())
    statuses = await _statuses(client)
    not_completed: dict[str, int] = {}
    for run_id in starts:
        state = statuses[run_id].state
        if state is not aiki.RunState.COMPLETED:
            not_completed[state.value] = not_completed.get(state.value, 0) + 1
    return Throughput(
        runs=len(starts),
        enqueue_s=(enqueue_end - first) / 1000,
        elapsed_s=(max(ends.values()) - first) / 1000,
        latencies_ms=[ends[run_id] - start for run_id, start in starts.items()],
        not_completed=not_completed,
        writer=writer,
        cpu_s=cpu,
        loop_cpu_s=loop_cpu,
    )


async def latency(client: aiki.Client, stats: WriterStats, args: Any) -> Latency:
    samples: list[float] = []
    before = stats.checkpoint()
    for i in range(args.warmup + args.latency_runs):
        if i == args.warmup:
            before = stats.checkpoint()
        start = time.perf_counter()
        handle = await two_tasks.enqueue(client, payload={"i": -1 - i})
        await handle.wait_for_completion(timeout=args.timeout)
        if i >= args.warmup:
            samples.append((time.perf_counter() - start) * 1000)
    return Latency(samples_ms=samples, writer=stats.since(before))


# --- reporting --------------------------------------------------------------------------------


def _per_run(count: int, runs: int) -> str:
    return f"{count:,} ({count / runs:.2f} per workflow)"


def report_throughput(result: Throughput, args: Any) -> list[tuple[str, str]]:
    lat = result.latencies_ms
    w = result.writer
    observed = (
        "the run's updated_at_ms read back from storage after the fact (storage clock, "
        "ms resolution; stamped by the finish write, just before its batch commits)"
        if args.observe == "storage"
        else "the moment the run's wait_for_completion() returned (one waiter per run, "
        "all concurrent; the waiters add a status read per run)"
    )
    rows = [
        ("runs", f"{result.runs:,} x {TASKS_PER_RUN} no-op async tasks"),
        ("enqueue", f"concurrently in chunks of {args.chunk}, done after {result.enqueue_s:.2f} s"),
        ("wall time", f"{result.elapsed_s:.2f} s (first enqueue start -> last completion)"),
        ("workflows/s", f"{result.runs / result.elapsed_s:,.0f}"),
        ("tasks/s", f"{result.runs * TASKS_PER_RUN / result.elapsed_s:,.0f}"),
        ("enqueue->completion p50", f"{percentile(lat, 50):,.1f} ms"),
        ("enqueue->completion p99", f"{percentile(lat, 99):,.1f} ms"),
        ("enqueue->completion max", f"{max(lat):,.1f} ms"),
        ("completion measured at", observed),
        (
            "CPU per workflow",
            f"{result.cpu_s / result.runs * 1e6:,.0f} us: event loop thread "
            f"{result.loop_cpu_s / result.runs * 1e6:,.0f} us, other threads (SQLite writer) "
            f"{(result.cpu_s - result.loop_cpu_s) / result.runs * 1e6:,.0f} us",
        ),
        (
            "CPU busy",
            f"{result.cpu_s / result.elapsed_s:.0%} of one core (event loop thread "
            f"{result.loop_cpu_s / result.elapsed_s:.0%})",
        ),
        ("storage transactions", _per_run(w.transactions, result.runs)),
        ("  of which write", _per_run(w.write_transactions, result.runs)),
        ("storage operations", f"{_per_run(w.writes, result.runs)} writes, {w.reads:,} reads"),
        ("largest batch", f"{w.largest_batch} operations in one transaction"),
    ]
    if args.storage is not None:  # counted at the driver: these two are not known
        rows = [row for row in rows if row[0] not in ("  of which write", "largest batch")]
    if result.not_completed:
        rows.append(
            ("NOT COMPLETED", ", ".join(f"{n} {s}" for s, n in result.not_completed.items()))
        )
    return rows


def report_latency(result: Latency, args: Any) -> list[tuple[str, str]]:
    lat = result.samples_ms
    w = result.writer
    runs = len(lat)
    return [
        ("runs", f"{runs} one at a time, after {args.warmup} warm-up runs"),
        ("p50", f"{percentile(lat, 50):.2f} ms"),
        ("p99", f"{percentile(lat, 99):.2f} ms"),
        ("max", f"{max(lat):.2f} ms"),
        ("measured", "enqueue() call start -> wait_for_completion() returned (client side)"),
        ("storage transactions", _per_run(w.transactions, runs)),
        (
            "storage operations",
            f"{_per_run(w.writes, runs)} writes, {_per_run(w.reads, runs)} reads",
        ),
    ]


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    print(f"  {'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


# --- main -------------------------------------------------------------------------------------


async def bench(args: Any, storage: str, counting: Callable[[], Any]) -> None:
    print("Aiki embedded benchmark: server, client and one worker in one process")
    print(
        f"  python {platform.python_version()} ({platform.machine()}), SQLite "
        f"{sqlite3.sqlite_version}, loop {type(asyncio.get_running_loop()).__module__}"
    )
    print(f"  storage {storage}" + (" (fresh)" if not args.db else ""))
    print(f"  worker: max_concurrent_workflow_runs={args.concurrency}, max_batch_size={args.batch}")
    with counting() as stats:
        async with aiki.server(storage) as srv:
            client = await aiki.create_client(server=srv)
            worker = await aiki.worker(
                client,
                id="bench-worker",
                max_concurrent_workflow_runs=args.concurrency,
                workflow_run_subscriber=aiki.SubscriberConfig(max_batch_size=args.batch),
            )
            worker.registry.add(two_tasks)
            await worker.start()
            try:
                async with asyncio.timeout(args.timeout):
                    if args.runs:
                        result = await throughput(client, stats, args)
                        print_table("Throughput", report_throughput(result, args))
                    if args.latency_runs:
                        lat = await latency(client, stats, args)
                        print_table("Sequential latency (idle system)", report_latency(lat, args))
            finally:
                await worker.stop()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs in the throughput phase")
    parser.add_argument(
        "--concurrency", type=int, default=200, help="worker max_concurrent_workflow_runs"
    )
    parser.add_argument("--batch", type=int, default=100, help="worker max_batch_size (per claim)")
    parser.add_argument("--chunk", type=int, default=100, help="enqueue calls in flight at once")
    parser.add_argument("--db", type=Path, help="database file (default: a fresh temporary one)")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="a postgresql:// URL: run on PostgreSQL, in a fresh database created on that "
        "server (and dropped at the end) instead of SQLite",
    )
    parser.add_argument("--latency-runs", type=int, default=200, help="sequential runs timed")
    parser.add_argument("--warmup", type=int, default=20, help="sequential runs not timed")
    parser.add_argument(
        "--observe",
        choices=("storage", "handles"),
        default="storage",
        help="how completion is timed in the throughput phase (see the printed table)",
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this (s)")
    args = parser.parse_args(argv)
    if args.runs < 0 or args.latency_runs < 0 or args.warmup < 0 or args.chunk < 1:
        parser.error("counts must be >= 0 and --chunk >= 1")
    if args.storage is not None and (
        args.db is not None or not args.storage.startswith(("postgresql://", "postgres://"))
    ):
        parser.error("--storage takes a postgresql:// URL, and not with --db")
    return args


@contextlib.asynccontextmanager
async def fresh_postgres(url: str) -> AsyncIterator[str]:
    """A new database on the server `url` names, dropped on exit; yields its URL."""
    asyncpg = importlib.import_module("asyncpg")  # only this mode needs the driver
    name = f"bench_embedded_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def bench_postgres(args: Any) -> None:
    counting = importlib.import_module("_pg_stats").counting_pg_transactions
    async with fresh_postgres(args.storage) as url:
        await bench(args, url, counting)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.loop == "uvloop":
        # Only when asked: the bench does not depend on uvloop (`uv run --with uvloop ...`).
        runner: Callable[[Any], Any] = importlib.import_module("uvloop").run
    else:
        runner = asyncio.run
    if args.storage is not None:
        runner(bench_postgres(args))
        return
    if args.db is not None:
        if args.db.exists():
            sys.exit(f"{args.db} exists: the benchmark wants a fresh database file")
        runner(bench(args, f"sqlite:///{args.db.resolve()}", counting_transactions))
        return
    with tempfile.TemporaryDirectory(prefix="aiki-bench-") as tmp:
        db = Path(tmp) / "bench.db"
        runner(bench(args, f"sqlite:///{db.resolve()}", counting_transactions))


if __name__ == "__main__":
    main()
