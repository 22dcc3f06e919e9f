"""A worker SIGKILLed with a batch of reports in flight (issue 10).

The worker reaches its server through a proxy in this process that holds the first
`POST /v1/workers/reports` request it sees (and whatever follows on that connection), so the
batch is written by the worker and not yet answered when the worker dies. Then the batch
either reaches the server after the death, or never does. Either way the runs resume on
another worker, every task end is recorded once, and every run completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import aiki
from aiki._core.models import NewRun
from processes import Processes, Server, SideEffects

pytestmark = pytest.mark.timeout(60)

_REPORTS = b"POST /v1/workers/reports"


class HoldingProxy:
    """TCP proxy to the server that holds the first reports request and all after it."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self.held = asyncio.Event()
        self._release: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._holding_taken = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def release(self, *, forward: bool) -> None:
        """Send the held bytes on to the server (`forward`), or drop the connection."""
        self._release.set_result(forward)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        down = asyncio.ensure_future(self._pipe(up_reader, writer))
        up = asyncio.ensure_future(self._pipe_up(reader, up_writer))
        self._tasks.update((down, up))
        with contextlib.suppress(Exception):
            await asyncio.wait([down, up], return_when=asyncio.FIRST_COMPLETED)
        for task in (down, up):
            task.cancel()
        writer.close()
        up_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()

    async def _pipe_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            if _REPORTS in chunk and not self._holding_taken:
                self._holding_taken = True  # this connection holds; the others flow
                held = [chunk]
                self.held.set()
                wait_more = asyncio.ensure_future(asyncio.shield(self._release))
                while not wait_more.done():
                    more = asyncio.ensure_future(reader.read(65536))
                    either: list[asyncio.Future[Any]] = [more, wait_more]
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                    if more.done() and more.result():
                        held.append(more.result())
                    elif not more.done():
                        more.cancel()
                if not wait_more.result():
                    return  # dropped: the batch never reaches the server
                for part in held:
                    writer.write(part)
                await writer.drain()
                continue
            writer.write(chunk)
            await writer.drain()


async def enqueue(client: aiki.Client, key: str, effects: SideEffects, gate: Path) -> str:
    payload = {"key": key, "log": str(effects.path), "gate": str(gate)}
    enqueued = await client.enqueue(
        NewRun(workflow="blocking", version="1", payload_json=json.dumps(payload))
    )
    return enqueued.id


@pytest.mark.parametrize("arrives", [True, False], ids=["batch-arrives-late", "batch-lost"])
async def test_a_worker_killed_with_reports_in_flight_loses_nothing_and_records_once(
    procs: Processes, effects: SideEffects, connect: Any, tmp_path: Path, arrives: bool
) -> None:
    server = procs.server(tmp_path / "aiki.db")
    proxy = HoldingProxy(server.port)
    await proxy.start()
    try:
        doomed = procs.worker(Server(server.proc, proxy.port), worker_id="worker-a", concurrency=10)
        await procs.ready(doomed)
        client = await connect(server.url)
        gate = tmp_path / "gate"
        run_ids = [await enqueue(client, f"order-{i}", effects, gate) for i in range(5)]
        # Each run's step-one end is sent as its blocking-step begins: held at the proxy.
        await asyncio.wait_for(proxy.held.wait(), 15)
        await procs.until(
            lambda: effects.calls("step-one") == 5, "step-one on worker-a for every run"
        )

        assert doomed.kill() == -signal.SIGKILL
        proxy.release(forward=arrives)
        rescuer = procs.worker(server, worker_id="worker-b")
        await procs.ready(rescuer)
        gate.touch()

        results = [
            await client.get_handle(run_id).wait_for_completion(timeout=30) for run_id in run_ids
        ]
    finally:
        await proxy.aclose()

    assert results == [["one", "unblocked", "final"]] * 5
    recorded_by_a = 0
    for run_id in run_ids:
        history = await client.get_handle(run_id).get_history()
        ends = Counter(e.data["task"] for e in history if e.kind.value == "task_completed")
        assert ends == Counter({"step-one": 1, "blocking-step": 1, "final-step": 1}), run_id
        assert [e.kind.value for e in history].count("run_completed") == 1
        (step_one,) = (
            e for e in history if e.kind.value == "task_completed" and e.data["task"] == "step-one"
        )
        recorded_by_a += step_one.data["worker_id"] == "worker-a"
    # What worker-a's batch recorded was not run again; what it lost was, once.
    assert effects.calls("step-one") == 5 + (5 - recorded_by_a)
    if arrives:
        assert recorded_by_a >= 1, "the batch written before the kill was applied"
    else:
        assert recorded_by_a == 0
