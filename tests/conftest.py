"""Shared fixtures: a fake clock, an embedded server on a fresh SQLite file or PostgreSQL
database, workers, a PostgreSQL database and a Redis for the tests that need one, and real
`aiki` processes with clients of them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import aiki
from _httpx_transport import HttpxTransport
from _services import PostgresDatabase, RedisProcess, postgres_database, redis_url
from aiki.testing import FakeClock
from processes import Processes, Server, SideEffects

WorkerFactory = Callable[..., Awaitable[aiki.Worker]]
Connect = Callable[[Server | str], Awaitable[aiki.Client]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[PostgresDatabase]:
    """A migrated PostgreSQL database of this session's own (tests empty it with `reset()`).

    Skips the test when PostgreSQL is unreachable, or fails it when CI=true (`_services`).
    """
    with postgres_database() as database:
        yield database


@pytest.fixture
async def database(postgres_db: PostgresDatabase) -> PostgresDatabase:
    """The session's PostgreSQL database, emptied."""
    await postgres_db.reset()
    return postgres_db


@pytest.fixture
def redis() -> str:
    """The URL of the shared Redis (skipped, or failed under CI, when it is unreachable)."""
    return redis_url()


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server, started; a test may kill and restart it. Killed at the end."""
    process = RedisProcess(tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def srv(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[aiki.Server]:
    """An embedded server on a fresh SQLite file, or on the session's emptied PostgreSQL database.

    On PostgreSQL the fake clock's readings stand in for the database clock, as for SQLite.
    """
    if request.param == "postgres":
        database: PostgresDatabase = request.getfixturevalue("postgres_db")
        await database.reset()
        url = database.dsn
    else:
        url = f"sqlite:///{tmp_path}/aiki.db"
    async with aiki.server(url, clock=clock) as server:
        yield server


@pytest.fixture(params=["inprocess", "http"])
async def client(request: pytest.FixtureRequest, srv: aiki.Server) -> AsyncIterator[aiki.Client]:
    """A client of `srv`: in-process, or over HTTP through its ASGI app in this event loop."""
    if request.param == "inprocess":
        c = await aiki.create_client(server=srv)
    else:
        transport = httpx.ASGITransport(app=srv.app)
        c = await aiki.create_client(url="http://aiki.test", _transport=HttpxTransport(transport))
    async with c:
        yield c


@pytest.fixture
async def make_worker(client: aiki.Client, clock: FakeClock) -> AsyncIterator[WorkerFactory]:
    """Start workers on the shared fake clock; every one is stopped at the end of the test."""
    started: list[aiki.Worker] = []

    async def make(*workflows: aiki.Workflow[Any, Any], **options: Any) -> aiki.Worker:
        options.setdefault("clock", clock)
        options.setdefault("graceful_shutdown_timeout_ms", 0)
        w = await aiki.worker(client, **options)
        for wf in workflows:
            w.registry.add(wf)
        await w.start()
        started.append(w)
        return w

    yield make
    for w in started:
        await w.stop()


@pytest.fixture
async def browser(srv: aiki.Server) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of `srv`'s ASGI app (the dashboard, the raw API), in this event loop."""
    transport = httpx.ASGITransport(app=srv.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://aiki.test") as b:
        yield b


# --- real processes -----------------------------------------------------------------------------


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Starts `aiki` processes in the test's folder; every one is stopped at the end."""
    with Processes(tmp_path) as processes:
        yield processes


@pytest.fixture
def effects(tmp_path: Path) -> SideEffects:
    """The log the crash and topology workflows' tasks append to."""
    return SideEffects(tmp_path / "effects.log")


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """`await connect(server)` (or a URL): an HTTP client of a server process, closed after."""
    clients: list[aiki.Client] = []

    async def make(server: Server | str) -> aiki.Client:
        url = server if isinstance(server, str) else server.url
        client = await aiki.create_client(url=url)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
