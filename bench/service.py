"""Aiki as a service: one `aiki server` process, K `aiki worker` processes, a client over HTTP.

Storage is a fresh SQLite file. Each run is a workflow calling two no-op async tasks
(`bench/_two_tasks.py`). Everything listens on 127.0.0.1 only and every process is stopped at
the end. Two phases:

- throughput: the bench process enqueues `--runs` runs over HTTP, `--chunk` calls in flight
  at once, while the workers execute them; it reports workflows/s, tasks/s and the
  enqueue-to-completion latency of each run under that load;
- latency: on the idle system, one run at a time: enqueue, then `wait_for_completion()`, timed
  as the user sees it; then where that time went, from the runs' history.

Both phases report the CPU time of every process (from /proc/<pid>/stat for the server and
workers, `time.process_time()` for this process) per 1,000 workflows.

Run: `uv run python bench/service.py` (`--help` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _counting_server import COUNTS_PATH
from _two_tasks import TASKS_PER_RUN, two_tasks

import aiki

BENCH = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


# --- processes --------------------------------------------------------------------------------


def aiki_command() -> str:
    beside = Path(sys.executable).with_name("aiki")
    if not beside.exists():
        sys.exit(f"no `aiki` script beside {sys.executable}: run with `uv run`")
    return str(beside)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cpu:
    """CPU seconds used so far, by role."""

    server: float
    workers: float
    client: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(
            server=self.server - other.server,
            workers=self.workers - other.workers,
            client=self.client - other.client,
        )

    @property
    def total(self) -> float:
        return self.server + self.workers + self.client


@dataclass
class Service:
    """The server and worker processes of one benchmark."""

    folder: Path
    command: str = field(default_factory=aiki_command)
    servers: list[Child] = field(default_factory=list)
    server_urls: list[str] = field(default_factory=list)
    workers: list[Child] = field(default_factory=list)
    url: str = ""  # the client's server: the last one (the workers poll the first)

    def _start(self, name: str, args: Sequence[str], program: Sequence[str] = ()) -> Child:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIKI_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        log = self.folder / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [*(program or [self.command]), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
            )
        return Child(name, popen, log)

    def start(
        self,
        storage: str,
        workers: int,
        concurrency: int,
        server_args: Sequence[str] = (),
        servers: int = 1,
    ) -> None:
        """Start `servers` servers on `storage` (a URL), with `server_args`, then the workers.

        The workers poll the first server and the client uses the last: with two, every run's
        news crosses from one server to the other (through the queue in `server_args`).
        """
        for i in range(servers):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            command = ["server", "--storage", storage, "--host", "127.0.0.1", "--port", str(port)]
            # `aiki server` with each request counted (bench/_counting_server.py).
            counting = [sys.executable, str(BENCH / "_counting_server.py")]
            self.servers.append(self._start(f"server-{i}", [*command, *server_args], counting))
            self.server_urls.append(url)
            self._wait_healthy(self.servers[-1], url)
        self.url = self.server_urls[-1]
        for i in range(workers):
            poll = self.server_urls[0]
            args = ["worker", "_two_tasks:two_tasks", "--server", poll, "--id", f"bench-{i}"]
            args += ["--concurrency", str(concurrency)]
            self.workers.append(self._start(f"worker-{i}", args))
        for worker in self.workers:
            self._wait_for(worker, "serving")

    def _wait_healthy(self, server: Child, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(timeout=1.0) as http:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if http.get(f"{url}/health").status_code == 200:
                        return
                self._check_alive(server, deadline)
                time.sleep(0.01)

    def _wait_for(self, child: Child, text: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while text not in child.output():
            self._check_alive(child, deadline)
            time.sleep(0.01)

    @staticmethod
    def _check_alive(child: Child, deadline: float) -> None:
        if child.popen.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{child.name} did not start:\n{child.output()}")

    def requests(self) -> Counter[str]:
        """HTTP requests the servers have answered so far, by route."""
        counts: Counter[str] = Counter()
        for url in self.server_urls:
            reply = httpx.get(f"{url}{COUNTS_PATH}", timeout=5.0)
            reply.raise_for_status()
            counts.update(reply.json())
        return counts

    def cpu(self) -> Cpu:
        return Cpu(
            server=sum(cpu_seconds(server.popen.pid) for server in self.servers),
            workers=sum(cpu_seconds(w.popen.pid) for w in self.workers),
            client=time.process_time(),
        )

    def stop(self) -> None:
        """SIGTERM the workers, then the server; SIGKILL what does not exit in time."""
        groups = [self.workers, self.servers]
        for group in groups:
            for child in group:
                if child.popen.poll() is None:
                    child.popen.send_signal(signal.SIGTERM)
            for child in group:
                try:
                    child.popen.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    print(f"{child.name} ignored SIGTERM; killing it", file=sys.stderr)
                    child.popen.kill()
                    child.popen.wait()


@contextlib.contextmanager
def running_service(folder: Path, storage: str, args: Any) -> Iterator[Service]:
    service = Service(folder)
    try:
        queue = ["--queue", args.queue] if args.queue else []
        service.start(storage, args.workers, args.concurrency, queue, servers=args.servers)
        yield service
    finally:
        service.stop()


# --- measuring --------------------------------------------------------------------------------


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def wall_ms() -> float:
    return time.time() * 1000


@dataclass
class Throughput:
    runs: int
    enqueue_s: float  # first enqueue call started -> last enqueue call returned
    elapsed_s: float  # first enqueue call started -> last run completed
    latencies_ms: list[float]
    not_completed: dict[str, int]
    cpu: Cpu
    requests: Counter[str]


@dataclass
class Latency:
    samples_ms: list[float]
    # Mean time of each step of one run, in ms, from the clocks of client and storage.
    steps_ms: dict[str, float]
    cpu: Cpu
    requests: Counter[str]


async def _statuses(client: aiki.Client) -> dict[str, aiki.RunStatus]:
    statuses: dict[str, aiki.RunStatus] = {}
    after: str | None = None
    while True:
        page = await client.list_runs(workflow=two_tasks.name, after=after, limit=1000)
        statuses.update((status.id, status) for status in page)
        if len(page) < 1000:
            return statuses
        after = page[-1].id


async def _settled(handle: aiki.RunHandle[Any], timeout: float) -> None:
    with contextlib.suppress(aiki.WorkflowRunFailedError, aiki.WorkflowRunCancelledError):
        await handle.wait_for_completion(timeout=timeout)


async def throughput(client: aiki.Client, service: Service, args: Any) -> Throughput:
    """Enqueue every run, wait until all have ended; completion times come from storage."""

    async def enqueue(i: int) -> tuple[str, float]:
        start = wall_ms()
        handle = await two_tasks.enqueue(client, payload={"i": i})
        return handle.id, start

    cpu_before, requests_before = service.cpu(), service.requests()
    starts: dict[str, float] = {}
    last_id = ""
    for low in range(0, args.runs, args.chunk):
        chunk = await asyncio.gather(
            *(enqueue(i) for i in range(low, min(low + args.chunk, args.runs)))
        )
        starts.update(chunk)
        last_id = chunk[-1][0]
    enqueue_end = wall_ms()
    # Claims go oldest first: wait on the last run, then on any stragglers. One waiter at a
    # time keeps the observer from adding load while the workers run.
    pending = [last_id]
    while pending:
        for run_id in pending:
            await _settled(client.get_handle(run_id), args.timeout)
        cpu_used = service.cpu() - cpu_before  # before the reads that check the end
        requests = service.requests() - requests_before
        ended = await _statuses(client)
        pending = [run_id for run_id in starts if not ended[run_id].state.is_final]
    not_completed: dict[str, int] = {}
    for run_id in starts:
        state = ended[run_id].state
        if state is not aiki.RunState.COMPLETED:
            not_completed[state.value] = not_completed.get(state.value, 0) + 1
    ends = {run_id: float(ended[run_id].updated_at_ms) for run_id in starts}
    first = min(starts.values())
    return Throughput(
        runs=len(starts),
        enqueue_s=(enqueue_end - first) / 1000,
        elapsed_s=(max(ends.values()) - first) / 1000,
        latencies_ms=[ends[run_id] - start for run_id, start in starts.items()],
        not_completed=not_completed,
        cpu=cpu_used,
        requests=requests,
    )


@dataclass
class _Timed:
    run_id: str
    start_ms: float  # wall clock, before the enqueue call
    enqueued_ms: float  # wall clock, the enqueue call returned
    done_ms: float  # wall clock, wait_for_completion() returned


async def latency(client: aiki.Client, service: Service, args: Any) -> Latency:
    samples: list[float] = []
    timed: list[_Timed] = []
    cpu_before = service.cpu()
    for i in range(args.warmup + args.latency_runs):
        if i == args.warmup:
            cpu_before, requests_before = service.cpu(), service.requests()
        start_wall, start = wall_ms(), time.perf_counter()
        handle = await two_tasks.enqueue(client, payload={"i": -1 - i})
        enqueued_wall = wall_ms()
        await handle.wait_for_completion(timeout=args.timeout)
        elapsed = time.perf_counter() - start
        if i >= args.warmup:
            samples.append(elapsed * 1000)
            timed.append(_Timed(handle.id, start_wall, enqueued_wall, wall_ms()))
    cpu_used = service.cpu() - cpu_before
    requests = service.requests() - requests_before
    steps = await _steps(client, timed)
    return Latency(samples_ms=samples, steps_ms=steps, cpu=cpu_used, requests=requests)


async def _steps(client: aiki.Client, timed: list[_Timed]) -> dict[str, float]:
    """Where one run's time goes: the mean of each step over the timed runs.

    Storage stamps events in whole milliseconds, so single steps are +-1 ms; the means over
    hundreds of runs are good to a fraction of that. Client and server share the machine's clock.
    """
    steps: dict[str, list[float]] = {}
    for t in timed:
        history = await client.get_handle(t.run_id).get_history()
        at = {e.kind.value: e.at_ms for e in history}
        stored, claimed, completed = at["run_enqueued"], at["run_claimed"], at["run_completed"]
        first, second = (e.at_ms for e in history if e.kind.value == "task_completed")
        for name, value in (
            ("enqueue call (client -> server -> client)", t.enqueued_ms - t.start_ms),
            ("  client -> run stored", stored - t.start_ms),
            ("run stored -> claimed by a worker", claimed - stored),
            ("claimed -> completed (2 tasks, on the worker)", completed - claimed),
            ("  claimed -> first task's end stored", first - claimed),
            ("  first task's end -> second's", second - first),
            ("  second task's end -> run completed", completed - second),
            ("completed -> wait_for_completion() returns", t.done_ms - completed),
        ):
            steps.setdefault(name, []).append(value)
    return {name: statistics.fmean(values) for name, values in steps.items()}


# --- reporting --------------------------------------------------------------------------------


def _cpu_rows(cpu: Cpu, runs: int, workers: int) -> list[tuple[str, str]]:
    per_k = 1000 / runs
    return [
        ("CPU s per 1,000 workflows", f"{cpu.total * per_k:.2f} (all processes)"),
        ("  server", f"{cpu.server * per_k:.2f}"),
        (f"  workers ({workers})", f"{cpu.workers * per_k:.2f}"),
        ("  client (this process)", f"{cpu.client * per_k:.2f}"),
    ]


def _request_rows(requests: Counter[str], runs: int) -> list[tuple[str, str]]:
    """HTTP requests per workflow, in all and by route (client, workers and all)."""
    rows = [("HTTP requests / workflow", f"{sum(requests.values()) / runs:.2f} (all processes)")]
    for route, n in requests.most_common():
        rows.append((f"  {route}", f"{n / runs:.2f}"))
    return rows


def report_throughput(result: Throughput, args: Any) -> list[tuple[str, str]]:
    lat = result.latencies_ms
    rows = [
        ("runs", f"{result.runs:,} x {TASKS_PER_RUN} no-op async tasks"),
        ("enqueue", f"{args.chunk} calls in flight, done after {result.enqueue_s:.2f} s"),
        ("wall time", f"{result.elapsed_s:.2f} s (first enqueue start -> last completion)"),
        ("workflows/s", f"{result.runs / result.elapsed_s:,.0f}"),
        ("tasks/s", f"{result.runs * TASKS_PER_RUN / result.elapsed_s:,.0f}"),
        ("enqueue->completion p50", f"{percentile(lat, 50):,.1f} ms"),
        ("enqueue->completion p99", f"{percentile(lat, 99):,.1f} ms"),
        ("enqueue->completion max", f"{max(lat):,.1f} ms"),
        (
            "completion measured at",
            "the run's updated_at_ms, read back from storage once all had ended",
        ),
        *_cpu_rows(result.cpu, result.runs, args.workers),
        ("CPU busy", f"{result.cpu.total / result.elapsed_s:.0%} of one core"),
        *_request_rows(result.requests, result.runs),
    ]
    if result.not_completed:
        rows.append(
            ("NOT COMPLETED", ", ".join(f"{n} {s}" for s, n in result.not_completed.items()))
        )
    return rows


def report_latency(result: Latency, args: Any) -> list[tuple[str, str]]:
    lat = result.samples_ms
    return [
        ("runs", f"{len(lat)} one at a time, after {args.warmup} warm-up runs"),
        ("p50", f"{percentile(lat, 50):.2f} ms"),
        ("p99", f"{percentile(lat, 99):.2f} ms"),
        ("max", f"{max(lat):.2f} ms"),
        ("measured", "enqueue() call start -> wait_for_completion() returned, in the client"),
        ("where it goes (means)", ""),
        *((f"  {name}", f"{ms:.2f} ms") for name, ms in result.steps_ms.items()),
        *_cpu_rows(result.cpu, len(lat), args.workers),
        *_request_rows(result.requests, len(lat)),
    ]


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    print(f"  {'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


# --- main -------------------------------------------------------------------------------------


async def bench(args: Any, folder: Path) -> None:
    storage = args.storage or f"sqlite:///{folder / 'bench.db'}"
    print("Aiki service benchmark: aiki server + aiki worker processes, client over HTTP")
    print(
        f"  python {platform.python_version()} ({platform.machine()}, {os.cpu_count()} CPUs), "
        f"SQLite {sqlite3.sqlite_version}"
    )
    print(f"  storage {storage}" + ("" if args.storage else " (fresh)"))
    print(f"  {args.workers} worker process(es), --concurrency {args.concurrency} each")
    if args.servers > 1:
        print(
            f"  {args.servers} servers, queue {args.queue or 'PostgreSQL'}: the workers poll "
            "the first, the client calls the last"
        )
    with running_service(folder, storage, args) as service:
        async with await aiki.create_client(url=service.url) as client:
            async with asyncio.timeout(args.timeout):
                if args.runs:
                    result = await throughput(client, service, args)
                    print_table("Throughput", report_throughput(result, args))
                if args.latency_runs:
                    lat = await latency(client, service, args)
                    print_table("Sequential latency (idle system)", report_latency(lat, args))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs in the throughput phase")
    parser.add_argument("--workers", type=int, default=1, help="aiki worker processes")
    parser.add_argument(
        "--concurrency", type=int, default=100, help="--concurrency of each worker process"
    )
    parser.add_argument("--chunk", type=int, default=100, help="enqueue calls in flight at once")
    parser.add_argument("--latency-runs", type=int, default=200, help="sequential runs timed")
    parser.add_argument("--warmup", type=int, default=20, help="sequential runs not timed")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this (s)")
    parser.add_argument(
        "--storage",
        help="storage URL of the server, e.g. postgresql://... of an empty database "
        "(default: a fresh SQLite file)",
    )
    parser.add_argument(
        "--servers", type=int, default=1, help="aiki server processes on the one storage"
    )
    parser.add_argument("--queue", help="the servers' --queue (e.g. redis://127.0.0.1:6379/0)")
    args = parser.parse_args(argv)
    if args.servers > 1 and not args.storage:
        parser.error("--servers above 1 needs a shared --storage (postgresql://...)")
    if min(args.runs, args.latency_runs, args.warmup) < 0:
        parser.error("counts must be >= 0")
    if min(args.workers, args.concurrency, args.chunk) < 1:
        parser.error("--workers, --concurrency and --chunk must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aiki-service-bench-") as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
