"""Real `aiki` processes for integration tests: servers, workers and CLI commands.

Every process binds 127.0.0.1, writes its output to a file in the test's folder (a pipe
nobody reads could fill and block it), and is stopped by `Processes.close()`, which the
fixtures call however the test ends. Nothing here sleeps for a fixed time: waits poll a
condition until a deadline, and a failed wait shows the processes' output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import httpx

INTEGRATION = Path(__file__).parent / "integration"
POLL_S = 0.01  # how often a wait looks again
STOP_TIMEOUT_S = 10.0  # SIGTERM, then this long before SIGKILL


def aiki_command() -> str:
    """The `aiki` script of the environment running the tests."""
    beside = Path(sys.executable).with_name("aiki")
    if beside.exists():
        return str(beside)
    found = shutil.which("aiki")
    if found is None:
        raise RuntimeError("no `aiki` script beside the interpreter or on PATH")
    return found


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: ours without AIKI_* settings, the workflows importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIKI_")}
    paths = [str(INTEGRATION), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """One child process, its output going to `log`."""

    def __init__(self, name: str, args: Sequence[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.args = list(args)
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=log.parent,
            )
        self.pid = self.popen.pid
        self.terminated = False  # sent SIGTERM already: a stop at teardown goes on to SIGKILL

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.popen.send_signal(sig)
            self.terminated |= sig is signal.SIGTERM

    def kill(self) -> int:
        """SIGKILL, as a crash: no handler runs, nothing is flushed or handed back."""
        self.signal(signal.SIGKILL)
        return self.popen.wait(timeout=STOP_TIMEOUT_S)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout} s\n{self.describe()}"
            ) from None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time; always reaped.

        A process that was sent SIGTERM before (by the test) and still runs gets SIGKILL.
        """
        if self.alive() and not self.terminated:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_TIMEOUT_S)
        if self.alive():
            self.popen.kill()
        self.popen.wait()

    def describe(self) -> str:
        state = "running" if self.alive() else f"exited {self.popen.returncode}"
        return f"--- {self.name} (pid {self.pid}, {state}): {' '.join(self.args)}\n{self.output()}"


class Server:
    """An `aiki server` process and where it listens."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


class Processes:
    """Starts `aiki` processes for one test and stops every one of them in `close()`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[Proc] = []
        self.servers: list[Proc] = []
        self.command = aiki_command()

    def start(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        log = self.folder / f"{name}-{len(self.procs)}.log"
        proc = Proc(name, [self.command, *args], log, child_env(env))
        self.procs.append(proc)
        return proc

    def server(
        self,
        db: Path | str,
        *,
        port: int | None = None,
        api_key: str | None = None,
        name: str = "server",
        queue: str | None = None,
        notify: bool = True,
        wait: bool = True,
    ) -> Server:
        """Start `aiki server` on `db` (on `port`, or a free one) and wait until it answers.

        `db` is a SQLite file, or a storage URL as a string (`postgresql://...`); `queue` and
        `notify` are the server's `--queue` and `--notify/--no-notify`. With `wait=False` it
        returns at once, to start several side by side: `wait_healthy()` each before use.
        """
        port = free_port() if port is None else port
        storage = f"sqlite:///{db}" if isinstance(db, Path) else db
        args = ["server", "--storage", storage, "--host", "127.0.0.1"]
        args += ["--port", str(port)]
        if api_key is not None:
            args += ["--api-key", api_key]
        if queue is not None:
            args += ["--queue", queue]
        if not notify:
            args.append("--no-notify")
        server = Server(self.start(name, args), port)
        self.servers.append(server.proc)
        if wait:
            self.wait_healthy(server)
        return server

    def worker(
        self,
        server: Server,
        *,
        worker_id: str,
        target: str = "crash_workflows:registry",
        concurrency: int = 10,
        heartbeat_ms: int = 250,
        grace_ms: int = 0,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """Start `aiki worker`; wait for `ready()` before counting on it."""
        args = ["worker", target, "--server", server.url, "--id", worker_id]
        args += ["--concurrency", str(concurrency), "--heartbeat-ms", str(heartbeat_ms)]
        args += ["--grace-ms", str(grace_ms)]
        return self.start(worker_id, args, env)

    def run_cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run one `aiki` command to its end; its output comes back as text."""
        return subprocess.run(
            [self.command, *args],
            capture_output=True,
            text=True,
            env=child_env(env),
            cwd=self.folder,
            timeout=timeout,
            check=False,
        )

    def run_cli_many(
        self, *commands: Sequence[str], timeout: float = 30.0
    ) -> list[subprocess.CompletedProcess[str]]:
        """Run independent `aiki` commands side by side (each takes a second to start)."""
        started: list[subprocess.Popen[str]] = []
        try:
            for args in commands:
                started.append(
                    subprocess.Popen(
                        [self.command, *args],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        env=child_env(),
                        cwd=self.folder,
                    )
                )
            deadline = time.monotonic() + timeout
            results = []
            for popen in started:
                out, err = popen.communicate(timeout=max(deadline - time.monotonic(), 0.1))
                results.append(subprocess.CompletedProcess(popen.args, popen.returncode, out, err))
            return results
        finally:
            for popen in started:
                if popen.poll() is None:
                    popen.kill()
                    popen.communicate()

    def wait_healthy(self, server: Server, timeout: float = 15.0) -> None:
        """Poll `/health` until the server answers 200 (or fail, showing its output)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as http:
            while True:
                if not server.proc.alive():
                    raise AssertionError(f"server exited while starting\n{self.describe()}")
                with contextlib.suppress(httpx.TransportError):
                    if http.get(f"{server.url}/health").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"server not healthy after {timeout} s\n{self.describe()}")
                time.sleep(POLL_S)

    async def until(
        self, check: Callable[[], bool], what: str, *, timeout: float = 15.0, every: float = POLL_S
    ) -> None:
        """Wait until `check()` is true; fail after `timeout` s, showing every process's output.

        `every` is how often it looks: longer for a check that costs more (reads a big file).
        """
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.describe()}")
            await asyncio.sleep(every)

    async def until_async(
        self,
        check: Callable[[], Awaitable[bool]],
        what: str,
        *,
        timeout: float = 15.0,
        every: float = POLL_S,
    ) -> None:
        """`until()` for a check that asks a server (a run's status or history)."""
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.describe()}")
            await asyncio.sleep(every)

    async def ready(self, worker: Proc, timeout: float = 15.0) -> None:
        """Wait until a worker process has registered and is taking runs."""
        await self.until(lambda: self._started(worker), f"{worker.name} to start", timeout=timeout)

    def wait_ready(self, worker: Proc, timeout: float = 15.0) -> None:
        """`ready()` for code outside an event loop."""
        deadline = time.monotonic() + timeout
        while not self._started(worker):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {worker.name}\n{self.describe()}")
            time.sleep(POLL_S)

    def _started(self, worker: Proc) -> bool:
        if "serving" in worker.output():
            return True
        if not worker.alive():
            raise AssertionError(f"{worker.name} exited while starting\n{self.describe()}")
        return False

    def describe(self) -> str:
        return "\n".join(proc.describe() for proc in self.procs)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process started: workers first, so none is left without its server."""
        others = [proc for proc in self.procs if proc not in self.servers]
        for proc in [*reversed(others), *reversed(self.servers)]:
            with contextlib.suppress(Exception):
                proc.stop()


class SideEffects:
    """The log file the crash workflows' tasks append to: one line per task call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, str, int, int]]:
        """(key, task, pid, attempt) of every call, in the order they happened."""
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            key, task, pid, attempt = line.split()
            rows.append((key, task, int(pid), int(attempt)))
        return rows

    def calls(self, task: str) -> int:
        """How many calls of `task` (of any run) the log holds, cheaply: nothing is parsed.

        Safe while processes are still writing to the log, as `lines()` is not: a line being
        written may be read half written.
        """
        if not self.path.exists():
            return 0
        return self.path.read_text(encoding="utf-8").count(f" {task} ")

    def mark(self) -> int:
        """How many whole lines the log holds now: `lines()[mark:]` are the calls since."""
        if not self.path.exists():
            return 0
        return self.path.read_bytes().count(b"\n")

    def counts(self, key: str) -> Counter[str]:
        """How many times each task ran for the run with this key."""
        return Counter(task for k, task, _, _ in self.lines() if k == key)

    def pids(self, key: str, task: str) -> list[int]:
        """Which processes ran `task` for the run with this key, in order."""
        return [pid for k, t, pid, _ in self.lines() if k == key and t == task]
