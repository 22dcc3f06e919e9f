"""The HTTP API on a real socket (uvicorn on 127.0.0.1), and workers that disconnect mid-poll."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import aiki
from aiki._core.ids import WorkerId
from aiki._core.models import NewRun, PollRequest, WorkflowKey
from aiki.client._http import HttpApi
from aiki.examples import morning_routine
from helpers import eventually, until

KEY = WorkflowKey(name="w", version="1")
POLL_BODY = {
    "worker_id": "ghost",
    "workflows": [{"name": "w", "version": "1"}],
    "capacity": 1,
    "lease_ms": 60_000,
    "wait_ms": 20_000,
    "recheck_ms": 1_000,
}


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 and an ephemeral port; yield its address."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # startup failed: raise its error
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def real_srv(tmp_path: Path) -> AsyncIterator[aiki.Server]:
    """A server on the real clock: workers over a socket heartbeat in real time."""
    async with aiki.server(f"sqlite:///{tmp_path}/aiki.db") as server:
        yield server


async def test_end_to_end_over_a_socket(real_srv: aiki.Server) -> None:
    async with (
        serving(real_srv.app) as address,
        await aiki.create_client(url=address) as client,  # no scheme: http
    ):
        worker = await aiki.worker(client, id="socket-worker")
        worker.registry.add(morning_routine)
        async with worker:
            handle = await morning_routine.enqueue(client, payload={"user_id": "1"})
            result = await handle.wait_for_completion(timeout=10)
        assert result == {"alarm_result": "Wake up!", "stretch_result": 300}
        assert (await handle.get_status()).state is aiki.RunState.COMPLETED
        with pytest.raises(aiki.RunNotFoundError):
            await client.get_handle("nope").get_status()

        async with httpx.AsyncClient(base_url=f"http://{address}") as raw:
            assert (await raw.get("/health")).json() == {"status": "ok"}
            assert "/v1/workers/poll" in (await raw.get("/openapi.json")).json()["paths"]


class Watched:
    """Wraps an app and tells when a poll request reaches it and when the app is done with it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.entered = asyncio.Event()
        self.finished = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        polling = scope["type"] == "http" and scope["path"] == "/v1/workers/poll"
        if polling:
            self.entered.set()
        try:
            await self.app(scope, receive, send)
        finally:
            if polling:
                self.finished.set()


async def test_worker_disconnect_ends_its_long_poll(real_srv: aiki.Server) -> None:
    """A worker gone mid-poll claims nothing: the next run goes to a live worker."""
    watched = Watched(real_srv.app)
    async with serving(watched) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}") as raw:
            ghost = asyncio.create_task(raw.post("/v1/workers/poll", json=POLL_BODY))
            await watched.entered.wait()
            await until(lambda: real_srv.service.parked_polls == 1)  # it waits for work
            ghost.cancel()  # the worker process dies: its connection closes
            with contextlib.suppress(asyncio.CancelledError):
                await ghost
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(5):
            await watched.finished.wait()
        assert loop.time() - started < 5, "the server stopped waiting for a gone worker"
        assert real_srv.service.parked_polls == 0, "no ghost poll is left to claim new runs"

        async with HttpApi(address) as api:
            enqueued = await api.enqueue(
                NewRun(workflow="w", version="1", payload_json="1", allow_unknown=True)
            )
            run = await api.get_status(enqueued.id)
            assert (await api.get_status(run.id)).state is aiki.RunState.PENDING
            request = PollRequest(
                worker_id=WorkerId("alive"),
                workflows=(KEY,),
                capacity=1,
                lease_ms=60_000,
                wait_ms=5_000,
                recheck_ms=100,
            )
            reply = await api.poll(request)
        assert [c.run.id for c in reply.claimed] == [run.id]


async def call_poll_then_leave(app: ASGIApp, body: dict[str, Any]) -> list[Message]:
    """Send a poll straight to the ASGI app; the client disconnects as soon as it is sent."""
    incoming: list[Message] = [
        {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/workers/poll",
        "raw_path": b"/v1/workers/poll",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "server": ("aiki.test", 80),
        "client": ("127.0.0.1", 50000),
    }
    await app(scope, receive, send)
    return sent


async def test_runs_claimed_for_a_worker_that_left_are_handed_back(srv: aiki.Server) -> None:
    """The claim runs while the worker disconnects: what it took goes back to pending."""
    enqueued = await srv.service.enqueue(
        NewRun(workflow="w", version="1", payload_json="1", allow_unknown=True)
    )
    run_id = enqueued.id

    await call_poll_then_leave(srv.app, POLL_BODY | {"wait_ms": 0})

    # The shielded claim and its hand-back may land after the disconnect returned (they do on
    # PostgreSQL, whose queries yield to the loop): wait for the hand-back, not for `pending`,
    # which the run also is before it was ever claimed.
    async def released() -> bool:
        history = await srv.service.get_history(run_id)
        return any(e.kind.value == "run_released" for e in history)

    await eventually(released)
    assert (await srv.service.get_status(run_id)).state is aiki.RunState.PENDING
    history = await srv.service.get_history(run_id)
    claims = [(e.kind.value, e.data.get("worker_id")) for e in history][1:]
    assert claims == [("run_claimed", "ghost"), ("run_released", "ghost")], "claimed, then back"
    request = PollRequest(
        worker_id=WorkerId("alive"),
        workflows=(KEY,),
        capacity=1,
        lease_ms=60_000,
        wait_ms=0,
        recheck_ms=100,
    )
    reply = await srv.service.poll(request)
    assert [c.run.id for c in reply.claimed] == [run_id]
    assert reply.claimed[0].run.worker_id == "alive"
