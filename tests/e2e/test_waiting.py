"""A client waiting for a run: woken when it ends, and given its final status."""

from __future__ import annotations

import asyncio
from typing import Any

import aiki
from aiki.client._http import HttpApi
from aiki.queue import Announcement
from conftest import WorkerFactory
from helpers import StorageCalls, until


def count_reads(srv: aiki.Server) -> StorageCalls:
    """Count run reads: `get_run`, and `get_runs` of many."""
    return StorageCalls(srv.storage, "get_run", "get_runs")


async def test_a_waiter_gets_the_final_status_without_reading_it_back(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    release = asyncio.Event()

    @aiki.task(name="gate")
    async def gate(ctx: aiki.TaskContext[Any]) -> str:
        await release.wait()
        return "done"

    @aiki.workflow(name="gated", version="1")
    async def gated(workflow_run: aiki.WorkflowRun[Any]) -> str:
        result: str = await gate.run(workflow_run, payload={})
        return result

    await make_worker(gated)
    handle = await gated.enqueue(client)
    reads = count_reads(srv)
    waiters = [asyncio.ensure_future(handle.wait_for_completion(timeout=10)) for _ in range(3)]

    # Over HTTP the three waits of one client share one request.
    expected_waits = 1 if isinstance(client.api, HttpApi) else 3
    await until(lambda: srv.service.parked_waits == expected_waits)
    release.set()
    assert await asyncio.gather(*waiters) == ["done"] * 3
    # This server made the run and has not heard of its end: nothing to read first. Its end
    # came with its final status.
    assert reads.total == 0


async def test_a_wait_reads_storage_first_once_news_may_have_been_missed(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.workflow(name="at-once", version="1")
    async def at_once(workflow_run: aiki.WorkflowRun[Any]) -> str:
        return "done"

    handle = await at_once.enqueue(client, allow_unknown=True)
    # The queue was cut off: another server may have ended the run meanwhile.
    srv.service.receive(Announcement(missed=True))
    reads = count_reads(srv)
    waiter = asyncio.ensure_future(handle.wait_for_completion(timeout=10))
    await until(lambda: srv.service.parked_waits == 1)
    assert reads.total == 1
    await make_worker(at_once)
    assert await waiter == "done"
    assert reads.total == 1


async def test_a_worker_between_runs_does_not_claim_again_until_news_comes(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.workflow(name="one-after-another", version="1")
    async def quick(workflow_run: aiki.WorkflowRun[Any]) -> int:
        value: int = workflow_run.payload["i"]
        return value

    claims = 0
    original = srv.storage.claim

    async def counting_claim(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return await original(*args, **kwargs)

    srv.storage.claim = counting_claim  # type: ignore[method-assign]
    await make_worker(quick, workflow_run_subscriber=aiki.SubscriberConfig(poll_interval_ms=60_000))
    for i in range(10):
        handle = await quick.enqueue(client, payload={"i": i})
        assert await handle.wait_for_completion(timeout=10) == i
    # One claim per run, plus the first poll's, which found nothing: without the news
    # counter, every run cost a second, empty claim right after the one that took it.
    assert claims <= 10 + 1
