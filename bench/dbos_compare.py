"""Aiki and DBOS 3.4 side by side on one local PostgreSQL: throughput, CPU, latency, transactions.

The workload of issue 4's benchmark: a workflow calling two no-op tasks (DBOS: steps), one
after the other. Each system and repetition runs in a fresh process (this script started again
with `--child`) against a fresh database, created here and dropped afterwards. Two phases:

- throughput: enqueue `--runs` runs, `--chunk` enqueue calls in flight, while the system
  executes them, then await every run's result as an application would; workflows/s = runs /
  (first enqueue call -> the last run's end as stamped in storage), and "results in hand" =
  runs / (first enqueue call -> the last result returned to this process). Over that phase:
  whole-machine CPU (/proc/stat: user+nice+system+irq+softirq), the CPU of the system's own
  processes and of the PostgreSQL backends serving the bench database
  (/proc/<pid>/stat), and the transactions the bench database committed or rolled back
  (pg_stat_database.xact_commit + xact_rollback);
- latency: on the idle system, `--warmup` runs then `--latency-runs` runs one at a time,
  enqueue call -> result in hand, p50 and p99.

Systems (`--systems`):

- dbos: DBOS with a sync workflow and sync steps, enqueued on a DBOS queue;
- dbos-async: the same with an async workflow and async steps;
- embedded: `aiki.server(storage=postgresql://...)`, an in-process client and one worker, in one
  process;
- service: `aiki server --storage postgresql://...` and `aiki worker` processes (bench/service.py
  starts them), the client over HTTP;
- service-redis: the same with `--queue redis://...` on the server (skipped when this Aiki's
  `aiki server` has no `--queue`).

Each system's figures are the median of `--reps` repetitions; the ratios are to the faster DBOS
variant. Run: `uv run --group bench python bench/dbos_compare.py` (`--quick` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from _two_tasks import TASKS_PER_RUN, two_tasks
from service import CLOCK_TICKS, Service, aiki_command, cpu_seconds

import aiki

SYSTEMS = ("dbos", "dbos-async", "embedded", "service", "service-redis")
DBOS_SYSTEMS = ("dbos", "dbos-async")
SERVICE_SYSTEMS = ("service", "service-redis")
DBOS_QUEUE = "bench"
RESULT_PREFIX = "RESULT "
# The aims of issue 4, and the raw-SQL ceiling it measured on this machine (not measured here).
RAW_SQL_CEILING_WPS = 1750
FLOOR_XACTS_PER_RUN = TASKS_PER_RUN + 3  # one per task plus about three per run
# A backend that goes idle less than a second after its last report to pg_stat reports again
# only after PostgreSQL's PGSTAT_IDLE_INTERVAL, 10 s: the counts may lag that long.
PGSTAT_LAG_S = 10.5
IDLE_WINDOW_S = 3.0  # how long the idle rate is measured
SETTLE_STEP_S = 1.0
OBSERVE_INTERVAL_S = 0.1


# --- the DBOS workflow ------------------------------------------------------------------------


@functools.cache
def dbos_workflows() -> tuple[Any, Any]:
    """DBOS's two-step workflow, sync and async: (sync workflow, async workflow).

    dbos is imported here rather than at the top so that the parent process and the Aiki
    children never load it (it is only in the `bench` dependency group).
    """
    from dbos import DBOS

    @DBOS.step(name="bench-step-a")
    def step_a(i: int) -> dict[str, Any]:
        return {}

    @DBOS.step(name="bench-step-b")
    def step_b(i: int) -> dict[str, Any]:
        return {}

    @DBOS.workflow(name="bench-two-steps")
    def two_steps(i: int) -> dict[str, Any]:
        step_a(i)
        step_b(i)
        return {"i": i}

    @DBOS.step(name="bench-async-step-a")
    async def async_step_a(i: int) -> dict[str, Any]:
        return {}

    @DBOS.step(name="bench-async-step-b")
    async def async_step_b(i: int) -> dict[str, Any]:
        return {}

    @DBOS.workflow(name="bench-async-two-steps")
    async def async_two_steps(i: int) -> dict[str, Any]:
        await async_step_a(i)
        await async_step_b(i)
        return {"i": i}

    return two_steps, async_two_steps


# --- the systems under test -------------------------------------------------------------------


@dataclass
class Driver:
    """What the phases need of one running system."""

    enqueue: Callable[[int], Awaitable[Any]]  # enqueue run i, return once it is stored
    result: Callable[[Any], Awaitable[Any]]  # the result of an enqueued run, in hand
    run_one: Callable[[int], Awaitable[Any]]  # enqueue run i and wait for its result
    pids: list[int]  # the processes whose CPU is the system's (this one included)
    ended_sql: str  # count of ended runs of the throughput phase
    times_sql: str  # (created ms, ended ms, completed?) of each of them
    sql_arg: str  # the $1 of both
    settings: str  # printed with the results


def db_url(admin_url: str, db: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@contextlib.asynccontextmanager
async def dbos_system(args: Any, url: str, asynchronous: bool) -> AsyncIterator[Driver]:
    from dbos import DBOS  # see dbos_workflows()

    sync_workflow, async_workflow = dbos_workflows()
    config: dict[str, Any] = {
        "name": "aiki-bench",
        "system_database_url": url,
        "log_level": args.dbos_log_level,
    }
    if args.dbos_pool_size:
        config["sys_db_pool_size"] = args.dbos_pool_size
    DBOS(config=config)  # type: ignore[arg-type]  # a plain dict for the DBOSConfig TypedDict
    # DBOS's sync setup calls refuse to run on a thread with a running event loop.
    await asyncio.to_thread(DBOS.launch)
    queue = await asyncio.to_thread(
        functools.partial(
            DBOS.register_queue,
            DBOS_QUEUE,
            worker_concurrency=args.dbos_worker_concurrency,
            polling_interval_sec=args.dbos_polling_interval,
        )
    )
    poll = args.dbos_result_poll

    if asynchronous:

        async def enqueue(i: int) -> Any:
            return await queue.enqueue_async(async_workflow, i)

        async def result(handle: Any) -> Any:
            return await handle.get_result(polling_interval_sec=poll)

        async def run_one(i: int) -> Any:
            return await result(await enqueue(i))

    else:
        # DBOS's own async enqueue is a thread hop too; the loop's default pool has
        # min(32, CPUs + 4) threads.
        async def enqueue(i: int) -> Any:
            return await asyncio.to_thread(queue.enqueue, sync_workflow, i)

        async def result(handle: Any) -> Any:
            return await asyncio.to_thread(handle.get_result, polling_interval_sec=poll)

        async def run_one(i: int) -> Any:
            return await asyncio.to_thread(
                lambda: queue.enqueue(sync_workflow, i).get_result(polling_interval_sec=poll)
            )

    ended = "queue_name = $1 AND status NOT IN ('PENDING', 'ENQUEUED', 'DELAYED')"
    table = "dbos.workflow_status"
    try:
        yield Driver(
            enqueue=enqueue,
            result=result,
            run_one=run_one,
            pids=[os.getpid()],
            ended_sql=f"SELECT count(*) FROM {table} WHERE {ended}",
            times_sql=f"SELECT created_at, updated_at, status = 'SUCCESS' FROM {table} "
            f"WHERE {ended}",
            sql_arg=DBOS_QUEUE,
            settings=dbos_settings(args),
        )
    finally:
        await asyncio.to_thread(DBOS.destroy)


def dbos_settings(args: Any) -> str:
    concurrency = args.dbos_worker_concurrency or "unlimited (DBOS default)"
    return (
        f"queue worker_concurrency={concurrency}, "
        f"polling_interval_sec={args.dbos_polling_interval} (DBOS default 1.0), "
        f"get_result polling_interval_sec={args.dbos_result_poll} (DBOS default 1.0), "
        f"sys_db_pool_size={args.dbos_pool_size or '20 (DBOS default)'}, "
        f"log_level={args.dbos_log_level}"
    )


def aiki_driver(client: aiki.Client, pids: list[int], settings: str, timeout: float) -> Driver:
    async def enqueue(i: int) -> Any:
        return await two_tasks.enqueue(client, payload={"i": i})

    async def result(handle: Any) -> Any:
        return await handle.wait_for_completion(timeout=timeout)

    async def run_one(i: int) -> Any:
        return await result(await enqueue(i))

    return Driver(
        enqueue=enqueue,
        result=result,
        run_one=run_one,
        pids=pids,
        ended_sql="SELECT count(*) FROM runs WHERE workflow = $1 "
        "AND state IN ('completed', 'failed', 'cancelled')",
        times_sql="SELECT created_at, updated_at, state = 'completed' FROM runs "
        "WHERE workflow = $1 AND state IN ('completed', 'failed', 'cancelled')",
        sql_arg=two_tasks.name,
        settings=settings,
    )


@contextlib.asynccontextmanager
async def embedded_system(args: Any, url: str) -> AsyncIterator[Driver]:
    async with aiki.server(url) as srv:
        client = await aiki.create_client(server=srv)
        worker = await aiki.worker(
            client,
            id="bench-worker",
            max_concurrent_workflow_runs=args.aiki_concurrency,
            workflow_run_subscriber=aiki.SubscriberConfig(max_batch_size=args.aiki_batch or None),
        )
        worker.registry.add(two_tasks)
        await worker.start()
        settings = (
            f"one worker in the process, max_concurrent_workflow_runs={args.aiki_concurrency}, "
            f"max_batch_size={args.aiki_batch}"
        )
        try:
            yield aiki_driver(client, [os.getpid()], settings, args.timeout)
        finally:
            await worker.stop()


@contextlib.asynccontextmanager
async def service_system(args: Any, url: str, queue: str | None) -> AsyncIterator[Driver]:
    server_args = ["--queue", queue] if queue else []
    # The processes' output goes beside this repetition's log, kept if anything fails.
    folder = Path(args.logs) / args.db
    folder.mkdir()
    service = Service(folder)
    try:
        # Blocking, but nothing else runs yet: it only waits for the processes to be ready.
        service.start(url, args.aiki_workers, args.aiki_concurrency, server_args)
        pids = [os.getpid(), *(server.popen.pid for server in service.servers)]
        pids += [worker.popen.pid for worker in service.workers]
        settings = (
            f"aiki server{' --queue ' + queue if queue else ''}, {args.aiki_workers} "
            f"aiki worker process(es) --concurrency {args.aiki_concurrency}, HTTP client"
        )
        async with await aiki.create_client(url=service.url) as client:
            yield aiki_driver(client, pids, settings, args.timeout)
    finally:
        service.stop()


def open_system(args: Any, url: str) -> contextlib.AbstractAsyncContextManager[Driver]:
    if args.child in DBOS_SYSTEMS:
        return dbos_system(args, url, asynchronous=args.child == "dbos-async")
    if args.child == "embedded":
        return embedded_system(args, url)
    queue = redis_queue_url(args.redis, args.db) if args.child == "service-redis" else None
    return service_system(args, url, queue)


def redis_queue_url(redis: str, db: str) -> str:
    # A namespace per repetition: no stale announcement of an earlier repetition reaches it.
    return f"{redis}?namespace={db}"


# --- measuring (in the child) -----------------------------------------------------------------


def machine_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy: user+nice+system+irq+softirq of /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


def live_cpu_seconds(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):  # a backend that has just exited
        return 0.0


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Snapshot:
    at: float  # time.monotonic()
    machine: float
    processes: float
    backends: dict[int, float]


class Meter:
    """CPU and transaction counts of the bench database, read over a connection to the admin
    database so that reading them adds nothing to what they count."""

    def __init__(self, admin: asyncpg.Connection, db: str, pids: list[int], skip_pid: int):
        self.admin, self.db, self.pids, self.skip_pid = admin, db, pids, skip_pid

    async def snapshot(self) -> Snapshot:
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> $2",
            self.db,
            self.skip_pid,
        )
        return Snapshot(
            at=time.monotonic(),
            machine=machine_cpu_seconds(),
            processes=sum(live_cpu_seconds(pid) for pid in self.pids),
            backends={row["pid"]: live_cpu_seconds(row["pid"]) for row in rows},
        )

    async def transactions(self) -> int:
        count: int = await self.admin.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", self.db
        )
        return count

    async def idle_rate(self) -> tuple[int, float, float]:
        """(count, when read, transactions/s) of the idle system, everything before reported.

        A system may keep polling while idle; that rate is taken off the time outside the phase.
        """
        await asyncio.sleep(PGSTAT_LAG_S)
        first, start = await self.transactions(), time.monotonic()
        await asyncio.sleep(IDLE_WINDOW_S)
        count, at = await self.transactions(), time.monotonic()
        return count, at, (count - first) / (at - start)

    async def settled_transactions(self) -> tuple[int, float]:
        """(count, when read) once everything done so far has been reported to pg_stat.

        After the reporting lag, wait until two successive steps moved the count by about the
        same amount (a polling system's idle rate), a few steps at most.
        """
        await asyncio.sleep(PGSTAT_LAG_S)
        last, previous_step = await self.transactions(), None
        for _ in range(10):
            await asyncio.sleep(SETTLE_STEP_S)
            now = await self.transactions()
            step = now - last
            if previous_step is not None and abs(step - previous_step) <= max(
                3, 0.1 * previous_step
            ):
                break
            last, previous_step = now, step
        return now, time.monotonic()


class Observer:
    """Waits for the end of the throughput phase by counting ended runs in storage.

    Its queries go to the bench database, so they are counted and subtracted (one transaction
    each).
    """

    def __init__(self, conn: asyncpg.Connection, driver: Driver):
        self.conn, self.driver, self.queries = conn, driver, 0

    async def ended(self) -> int:
        self.queries += 1
        count: int = await self.conn.fetchval(self.driver.ended_sql, self.driver.sql_arg)
        return count

    async def wait_for(self, runs: int) -> None:
        while await self.ended() < runs:
            await asyncio.sleep(OBSERVE_INTERVAL_S)


@dataclass
class RepResult:
    system: str
    rep: int
    settings: str
    runs: int
    elapsed_s: float
    enqueue_s: float
    in_hand_s: float  # first enqueue -> every result in the client's hand
    not_completed: int
    machine_cpu_s: float
    process_cpu_s: float
    backend_cpu_s: float
    transactions: float  # over the phase, the observer's and the idle rate outside it taken off
    idle_transactions_per_s: float
    observer_queries: int
    loaded_p50_ms: float  # enqueue -> end of each run during the throughput phase (storage stamps)
    loaded_p99_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    load_average: float  # 1-minute load average as the throughput phase started

    @property
    def workflows_per_s(self) -> float:
        return self.runs / self.elapsed_s


async def throughput(driver: Driver, observer: Observer, args: Any) -> tuple[float, float, float]:
    """Enqueue every run, then await every result, as an application would.

    Returns: (first enqueue wall ms, enqueue s, first enqueue -> last result in hand s).
    """
    first_ms = time.time() * 1000
    handles: list[Any] = []
    for low in range(0, args.runs, args.chunk):
        handles += await asyncio.gather(
            *(driver.enqueue(i) for i in range(low, min(low + args.chunk, args.runs)))
        )
    enqueue_s = time.time() - first_ms / 1000
    await asyncio.gather(*(driver.result(handle) for handle in handles))
    in_hand_s = time.time() - first_ms / 1000
    await observer.wait_for(args.runs)  # every end stored: at once, the results are in hand
    return first_ms, enqueue_s, in_hand_s


async def latency(driver: Driver, args: Any) -> list[float]:
    samples: list[float] = []
    for i in range(args.warmup + args.latency_runs):
        start = time.perf_counter()
        await driver.run_one(args.runs + i)
        if i >= args.warmup:
            samples.append((time.perf_counter() - start) * 1000)
    return samples


async def measure(args: Any, driver: Driver, admin: asyncpg.Connection) -> RepResult:
    url = db_url(args.pg, args.db)
    conn = await asyncpg.connect(url)
    try:
        observer = Observer(conn, driver)
        meter = Meter(admin, args.db, driver.pids, conn.get_server_pid())
        load = os.getloadavg()[0]
        xacts_before, read_before, idle_rate = await meter.idle_rate()
        before = await meter.snapshot()
        first_ms, enqueue_s, in_hand_s = await throughput(driver, observer, args)
        after = await meter.snapshot()
        xacts_after, read_after = await meter.settled_transactions()
        # Only now, with the count read: these reads would be counted too.
        rows = await conn.fetch(driver.times_sql, driver.sql_arg)
    finally:
        await conn.close()
    outside_s = (read_after - read_before) - (after.at - before.at)
    xacts = xacts_after - xacts_before - observer.queries - idle_rate * outside_s
    loaded = [float(ended - created) for created, ended, _ in rows]
    backend_cpu = sum(cpu - before.backends.get(pid, 0.0) for pid, cpu in after.backends.items())
    samples = await latency(driver, args) if args.latency_runs else [math.nan]
    return RepResult(
        system=args.child,
        rep=args.rep,
        settings=driver.settings,
        runs=len(rows),
        elapsed_s=(max(ended for _, ended, _ in rows) - first_ms) / 1000,
        enqueue_s=enqueue_s,
        in_hand_s=in_hand_s,
        not_completed=sum(1 for *_, completed in rows if not completed),
        machine_cpu_s=after.machine - before.machine,
        process_cpu_s=after.processes - before.processes,
        backend_cpu_s=backend_cpu,
        transactions=xacts,
        idle_transactions_per_s=idle_rate,
        observer_queries=observer.queries,
        loaded_p50_ms=percentile(loaded, 50),
        loaded_p99_ms=percentile(loaded, 99),
        latency_p50_ms=percentile(samples, 50),
        latency_p99_ms=percentile(samples, 99),
        load_average=load,
    )


async def child_main(args: Any) -> None:
    admin = await asyncpg.connect(args.pg)
    try:
        async with asyncio.timeout(args.timeout), open_system(args, db_url(args.pg, args.db)) as d:
            result = await measure(args, d, admin)
    finally:
        await admin.close()
    print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)


# --- running the repetitions (in the parent) --------------------------------------------------


def admin_sql(admin_url: str, *statements: str) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(admin_url)
        try:
            return [await conn.fetch(statement) for statement in statements]
        finally:
            await conn.close()

    return asyncio.run(run())


def has_queue_flag() -> bool:
    """Whether this Aiki's `aiki server` takes `--queue` (Redis delivery)."""
    shown = subprocess.run(
        [aiki_command(), "server", "--help"], capture_output=True, text=True, check=False
    )
    return "--queue" in shown.stdout


def drop_redis_keys(redis_url: str, namespace: str) -> None:
    import redis  # in the dev group; only needed when service-redis ran

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def run_rep(system: str, rep: int, args: Any, logs: Path) -> RepResult | str:
    """One repetition in a fresh process on a fresh database: its result, or why it failed."""
    db = f"bench_cmp_{system.replace('-', '_')}_{rep}_{secrets.token_hex(3)}"
    log = logs / f"{db}.log"
    command = [sys.executable, __file__, *sys.argv[1:]]
    command += ["--child", system, "--rep", str(rep), "--db", db, "--logs", str(logs)]
    admin_sql(args.pg, f'CREATE DATABASE "{db}"')
    try:
        # A session of its own: should the child hang, its server and workers go with it.
        with (
            log.open("w") as err,
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
            ) as child,
        ):
            try:
                # The child gives up after --timeout itself; this is the backstop.
                out, _ = child.communicate(timeout=args.timeout + 60)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                return f"timed out, log {log}"
    finally:
        admin_sql(args.pg, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if system == "service-redis":
            drop_redis_keys(args.redis, db)
    for line in out.splitlines():
        if line.startswith(RESULT_PREFIX):
            return RepResult(**json.loads(line.removeprefix(RESULT_PREFIX)))
    return f"exit {child.returncode}, log {log}"


# --- reporting (in the parent) ----------------------------------------------------------------


@dataclass
class Summary:
    system: str
    reps: list[RepResult]

    def median(self, value: Callable[[RepResult], float]) -> float:
        return statistics.median(value(rep) for rep in self.reps)

    @property
    def wps(self) -> float:
        return self.median(lambda r: r.workflows_per_s)

    def per_k(self, cpu: Callable[[RepResult], float]) -> float:
        """CPU seconds per 1,000 workflows, median of the repetitions."""
        return self.median(lambda r: cpu(r) / r.runs * 1000)

    @property
    def machine_per_k(self) -> float:
        return self.per_k(lambda r: r.machine_cpu_s)

    @property
    def process_per_k(self) -> float:
        return self.per_k(lambda r: r.process_cpu_s)

    @property
    def own_per_k(self) -> float:
        """The system's processes and its PostgreSQL backends: what other work on this shared
        machine does not disturb."""
        return self.per_k(lambda r: r.process_cpu_s + r.backend_cpu_s)

    @property
    def p50(self) -> float:
        return self.median(lambda r: r.latency_p50_ms)


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def _ratio(value: float, base: float | None) -> str:
    return "-" if base is None or not base or math.isnan(value) else f"{value / base:.2f}x"


def table_rows(summaries: list[Summary], base: Summary | None) -> list[tuple[str, list[str]]]:
    def row(name: str, value: Callable[[Summary], str]) -> tuple[str, list[str]]:
        return name, [value(s) for s in summaries]

    def reps(s: Summary) -> str:
        return " / ".join(f"{r.workflows_per_s:,.0f}" for r in s.reps)

    def not_completed(s: Summary) -> str:
        return str(sum(r.not_completed for r in s.reps))

    bw = base.wps if base else None
    bm = base.machine_per_k if base else None
    bo = base.own_per_k if base else None
    bp = base.process_per_k if base else None
    return [
        row("workflows/s (median)", lambda s: _fmt(s.wps, 0)),
        row("  each repetition", reps),
        row("  results in hand, wf/s", lambda s: _fmt(s.median(_in_hand_per_s), 0)),
        row("  throughput vs DBOS", lambda s: _ratio(s.wps, bw)),
        row("CPU s / 1,000 wf: machine", lambda s: _fmt(s.machine_per_k, 2)),
        row("  system + its PG backends", lambda s: _fmt(s.own_per_k, 2)),
        row("    system processes", lambda s: _fmt(s.process_per_k, 2)),
        row("    PostgreSQL backends", lambda s: _fmt(s.per_k(lambda r: r.backend_cpu_s), 2)),
        row(
            "  rest of the machine",
            lambda s: _fmt(
                s.per_k(lambda r: r.machine_cpu_s - r.process_cpu_s - r.backend_cpu_s), 2
            ),
        ),
        row("  machine CPU vs DBOS", lambda s: _ratio(s.machine_per_k, bm)),
        row("  system + PG CPU vs DBOS", lambda s: _ratio(s.own_per_k, bo)),
        row("  process CPU vs DBOS", lambda s: _ratio(s.process_per_k, bp)),
        row("transactions / workflow", lambda s: _fmt(s.median(_xacts_per_run), 2)),
        row("  idle transactions/s", lambda s: _fmt(s.median(lambda r: r.idle_transactions_per_s))),
        row("under load p50 ms", lambda s: _fmt(s.median(lambda r: r.loaded_p50_ms), 0)),
        row("under load p99 ms", lambda s: _fmt(s.median(lambda r: r.loaded_p99_ms), 0)),
        row("single run p50 ms", lambda s: _fmt(s.p50, 2)),
        row("single run p99 ms", lambda s: _fmt(s.median(lambda r: r.latency_p99_ms), 2)),
        row("runs not completed", not_completed),
        row("load average (1 min)", lambda s: _fmt(s.median(lambda r: r.load_average), 2)),
    ]


def _in_hand_per_s(rep: RepResult) -> float:
    return rep.runs / rep.in_hand_s


def _xacts_per_run(rep: RepResult) -> float:
    return rep.transactions / rep.runs


def print_table(summaries: list[Summary], base: Summary | None) -> None:
    rows = table_rows(summaries, base)
    width = max(len(name) for name, _ in rows)
    cells = [
        max(len(s.system), *(len(values[i]) for _, values in rows)) for i, s in enumerate(summaries)
    ]
    print(
        f"\n{'':<{width}}  "
        + "  ".join(f"{s.system:>{w}}" for s, w in zip(summaries, cells, strict=True))
    )
    for name, values in rows:
        print(
            f"{name:<{width}}  "
            + "  ".join(f"{v:>{w}}" for v, w in zip(values, cells, strict=True))
        )


def aim(text: str, ok: bool | None) -> None:
    mark = "n/a" if ok is None else ("met" if ok else "NOT MET")
    print(f"  [{mark:>7}] {text}")


def print_aims(summaries: dict[str, Summary], base: Summary | None) -> None:
    print("\nAims of issue 4 (ratios to the faster DBOS variant):")
    embedded = summaries.get("embedded")
    if embedded and base:
        ratio = embedded.wps / base.wps
        aim(f"embedded >= 10x DBOS throughput: {ratio:.1f}x", ratio >= 10)
        for label, per_k in (
            ("machine", lambda s: s.machine_per_k),
            ("system + PG backends", lambda s: s.own_per_k),
            ("process", lambda s: s.process_per_k),
        ):
            cpu = per_k(embedded) / per_k(base)
            aim(f"embedded <= 1/10 of DBOS's {label} CPU per workflow: {cpu:.3f}", cpu <= 0.1)
    if embedded:
        half = RAW_SQL_CEILING_WPS / 2
        aim(
            f"embedded >= half the issue's raw-SQL ceiling ({RAW_SQL_CEILING_WPS:,} wf/s, "
            f"measured there, not here): {embedded.wps:,.0f} wf/s",
            embedded.wps >= half,
        )
        aim(f"embedded single-run p50 < 5 ms: {embedded.p50:.2f} ms", embedded.p50 < 5)
    for name in SERVICE_SYSTEMS:
        service = summaries.get(name)
        if service is None:
            continue
        if base:
            ratio = service.wps / base.wps
            aim(f"{name} >= 5x DBOS throughput: {ratio:.1f}x", ratio >= 5)
        aim(f"{name} single-run p50 < 10 ms: {service.p50:.2f} ms", service.p50 < 10)
    if embedded:
        print("Aims of issue 10 (the service against embedded):")
        aim(f"embedded single-run p50 < 4 ms: {embedded.p50:.2f} ms", embedded.p50 < 4)
        for name in SERVICE_SYSTEMS:
            service = summaries.get(name)
            if service is None:
                continue
            ratio = service.wps / embedded.wps
            aim(f"{name} >= 50% of embedded throughput: {ratio:.0%}", ratio >= 0.5)
            cpu = service.own_per_k / embedded.own_per_k
            aim(f"{name} system + PG CPU <= 2x embedded's: {cpu:.2f}x", cpu <= 2)
            aim(f"{name} single-run p50 < 5 ms: {service.p50:.2f} ms", service.p50 < 5)
    for s in summaries.values():
        per_run = s.median(_xacts_per_run)
        aim(
            f"{s.system}: {per_run:.2f} transactions per workflow "
            f"(floor about {FLOOR_XACTS_PER_RUN}: one per task plus about three per run)",
            None if s.system in DBOS_SYSTEMS else per_run <= FLOOR_XACTS_PER_RUN + 0.5,
        )


def report(results: dict[str, list[RepResult]], failures: dict[str, list[str]]) -> None:
    summaries = {name: Summary(name, reps) for name, reps in results.items() if reps}
    dbos = [summaries[name] for name in DBOS_SYSTEMS if name in summaries]
    base = max(dbos, key=lambda s: s.wps) if dbos else None
    print("\nSettings used:")
    for s in summaries.values():
        print(f"  {s.system}: {s.reps[0].settings}")
    if summaries:
        print_table(list(summaries.values()), base)
        if base:
            print(f"\nDBOS baseline for the ratios: {base.system}")
        print_aims(summaries, base)
    for name, reasons in failures.items():
        for reason in reasons:
            print(f"  {name}: {reason}")
    notes = (
        "Notes: machine CPU is the whole machine's busy time during the throughput phase, other "
        "work on this shared machine included ('rest of the machine'); 'system + its PG "
        "backends' is what that other work does not disturb: the system's processes (DBOS and "
        "embedded: the one bench process; service: server, workers and the client) and the "
        "PostgreSQL backends connected to the bench database (a backend that ended during the "
        "phase is missed). Transactions are the bench database's pg_stat_database commits + "
        "rollbacks over the phase, less the observer's count queries and the idle rate outside "
        "the phase; a system that polls while idle has those polls counted during the phase too."
    )
    print("\n" + textwrap.fill(notes, width=100))


def header(args: Any, systems: Sequence[str]) -> None:
    version = admin_sql(args.pg, "SELECT current_setting('server_version')")[0][0][0]
    print("Aiki vs DBOS: workflow of two no-op tasks, on one local PostgreSQL")
    print(
        f"  python {platform.python_version()}, PostgreSQL {version}, {os.cpu_count()} CPUs, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"  {args.runs:,} runs x {args.reps} repetition(s), {args.chunk} enqueue calls in flight; "
        f"latency: {args.warmup} warm-up + {args.latency_runs} runs one at a time"
    )
    print(f"  systems: {', '.join(systems)}; each repetition a fresh process and database")


def parent_main(args: Any) -> None:
    systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    failures: dict[str, list[str]] = {}
    if "service-redis" in systems and not has_queue_flag():
        systems.remove("service-redis")
        failures["service-redis"] = ["skipped: this aiki has no --queue"]
    header(args, systems)
    results: dict[str, list[RepResult]] = {name: [] for name in systems}
    logs = Path(tempfile.mkdtemp(prefix="aiki-dbos-compare-logs-"))
    # Repetitions interleave the systems, so a change of load on this shared machine
    # falls on all of them rather than on one.
    for rep in range(1, args.reps + 1):
        for system in systems:
            started = time.monotonic()
            outcome = run_rep(system, rep, args, logs)
            took = time.monotonic() - started
            if isinstance(outcome, str):
                failures.setdefault(system, []).append(f"repetition {rep} failed: {outcome}")
                print(f"  rep {rep} {system}: FAILED ({outcome})", flush=True)
                continue
            results[system].append(outcome)
            print(
                f"  rep {rep} {system}: {outcome.workflows_per_s:,.0f} wf/s, single-run p50 "
                f"{outcome.latency_p50_ms:.2f} ms ({took:.0f} s)",
                flush=True,
            )
    report(results, failures)
    if failures or args.keep_logs:
        print(f"\nLogs kept in {logs}")
    else:
        shutil.rmtree(logs)


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs in the throughput phase")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each system")
    parser.add_argument("--chunk", type=int, default=100, help="enqueue calls in flight at once")
    parser.add_argument("--latency-runs", type=int, default=200, help="sequential runs timed")
    parser.add_argument("--warmup", type=int, default=20, help="sequential runs not timed")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 300 runs, 1 repetition, 50 latency runs by default",
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}"
    )
    parser.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="an existing database on the server where the bench databases are created "
        "(?host=/var/run/postgresql for a Unix socket)",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="for service-redis")
    parser.add_argument("--timeout", type=float, default=600.0, help="per repetition (s)")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep every process's output (kept on failure)"
    )
    dbos = parser.add_argument_group("DBOS settings")
    dbos.add_argument(
        "--dbos-worker-concurrency",
        type=int,
        default=None,
        help="the queue's worker_concurrency (default: DBOS's, unlimited)",
    )
    # 0.01 s: on this machine it gave DBOS its best throughput (with 0.1 s about the same) and
    # its best single-run latency; 1.0 s, the default, leaves every run waiting for a poll.
    dbos.add_argument(
        "--dbos-polling-interval",
        type=float,
        default=0.01,
        help="the queue's polling_interval_sec (DBOS's default is 1.0 s)",
    )
    dbos.add_argument(
        "--dbos-result-poll",
        type=float,
        default=0.001,
        help="get_result(polling_interval_sec=) in the latency phase (DBOS's default is 1.0 s)",
    )
    dbos.add_argument(
        "--dbos-pool-size", type=int, default=0, help="sys_db_pool_size (0: DBOS's default, 20)"
    )
    dbos.add_argument("--dbos-log-level", default="WARNING", help="DBOS's log_level")
    ours = parser.add_argument_group("Aiki settings")
    ours.add_argument(
        "--aiki-concurrency",
        type=int,
        default=200,
        help="max_concurrent_workflow_runs (embedded) / --concurrency of each worker (service)",
    )
    ours.add_argument(
        "--aiki-batch",
        type=int,
        default=100,
        help="embedded worker's max_batch_size (0: the default, as many as it has room for)",
    )
    ours.add_argument("--aiki-workers", type=int, default=1, help="aiki worker processes")
    # Set by the parent when it starts a repetition.
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--rep", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--logs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; counts given on the command line still win
        parser.set_defaults(runs=300, reps=1, latency_runs=50)
        args = parser.parse_args(argv)
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if min(args.runs, args.reps, args.chunk) < 1 or min(args.latency_runs, args.warmup) < 0:
        parser.error("--runs, --reps and --chunk must be >= 1, latency counts >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        asyncio.run(child_main(args))
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
