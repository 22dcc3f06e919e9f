"""Several servers on one PostgreSQL database, told of each other's news by their queue.

Workers here look at storage again only once a minute on their own, and heartbeats come once
a minute: whatever happens within a few seconds happens because the queue carried the news
from the server where it happened to the server the worker talks to.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

import aiki
from _services import PostgresDatabase

pytestmark = pytest.mark.postgres

SLOW = 60_000  # ms: rechecks and heartbeats that must not be what a test sees working
# Longer than any wake-up takes, shorter than the 5 s after which a waiting client looks at
# storage again by itself: a run seen ended within it was announced.
PROMPTLY_S = 4.0


@pytest.fixture(params=["notify", pytest.param("redis", marks=pytest.mark.redis)])
def queue(request: pytest.FixtureRequest) -> str | None:
    if request.param == "redis":
        redis: str = request.getfixturevalue("redis")
        return f"{redis}?namespace=test-{secrets.token_hex(4)}"
    return None  # PostgreSQL storage: LISTEN/NOTIFY


@pytest.fixture
async def servers(
    postgres_db: PostgresDatabase, queue: str | None
) -> AsyncIterator[tuple[aiki.Client, aiki.Client]]:
    """Clients of two servers sharing the database: (A, B)."""
    await postgres_db.reset()
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(2):
            srv = await stack.enter_async_context(aiki.server(postgres_db.dsn, queue=queue))
            clients.append(await stack.enter_async_context(await aiki.create_client(server=srv)))
        yield clients[0], clients[1]


async def slow_worker(client: aiki.Client, *workflows: aiki.Workflow[Any, Any]) -> aiki.Worker:
    worker = await aiki.worker(
        client,
        workflow_run_subscriber=aiki.SubscriberConfig(poll_interval_ms=SLOW, long_poll_ms=SLOW),
        workflow_run=aiki.WorkflowRunConfig(heartbeat_interval_ms=SLOW),
        graceful_shutdown_timeout_ms=0,
    )
    for workflow in workflows:
        worker.registry.add(workflow)
    await worker.start()
    return worker


@aiki.task(name="greet")
async def greet(ctx: aiki.TaskContext[dict[str, str]]) -> str:
    return f"hello {ctx.payload['name']}"


@aiki.workflow(name="greeting", version="1")
async def greeting(workflow_run: aiki.WorkflowRun[dict[str, str]]) -> str:
    return await greet.run(workflow_run, payload=workflow_run.payload)


async def test_a_run_enqueued_on_one_server_reaches_a_worker_on_another(
    servers: tuple[aiki.Client, aiki.Client],
) -> None:
    a, b = servers
    worker = await slow_worker(b, greeting)
    try:
        handles = [await greeting.enqueue(a, payload={"name": str(i)}) for i in range(5)]
        results = await asyncio.wait_for(
            asyncio.gather(*(h.wait_for_completion() for h in handles)), PROMPTLY_S
        )
    finally:
        await worker.stop()
    assert results == [f"hello {i}" for i in range(5)]


async def test_a_run_that_ended_before_the_wait_is_found_on_another_server(
    servers: tuple[aiki.Client, aiki.Client],
) -> None:
    """B did not make the run: it reads storage before it waits, and finds the end there."""
    a, b = servers
    worker = await slow_worker(a, greeting)
    try:
        handle = await greeting.enqueue(a, payload={"name": "early"})
        assert await asyncio.wait_for(handle.wait_for_completion(), PROMPTLY_S) == "hello early"
    finally:
        await worker.stop()
    # Announced on A long before; B's own news of it is beside the point.
    late = b.get_handle(handle.id)
    assert await asyncio.wait_for(late.wait_for_completion(), PROMPTLY_S) == "hello early"


async def test_a_cancel_on_one_server_reaches_the_task_on_a_worker_of_another(
    servers: tuple[aiki.Client, aiki.Client],
) -> None:
    a, b = servers
    started = asyncio.Event()

    @aiki.task(name="forever")
    async def forever(ctx: aiki.TaskContext[Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    @aiki.workflow(name="endless", version="1")
    async def endless(workflow_run: aiki.WorkflowRun[Any]) -> None:
        await forever.run(workflow_run, payload={})

    worker = await slow_worker(b, endless)
    try:
        handle = await endless.enqueue(b)
        await asyncio.wait_for(started.wait(), PROMPTLY_S)
        await a.get_handle(handle.id).cancel("from server A")
        with pytest.raises(aiki.WorkflowRunCancelledError):
            await asyncio.wait_for(handle.wait_for_completion(), PROMPTLY_S)
    finally:
        await worker.stop()
