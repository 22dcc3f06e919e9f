"""A new run goes straight to an idle worker: created claimed, in its enqueue's transaction.

A worker whose poll is parked waiting for work gets the run in that poll's reply, with no
claim of its own (`Service.enqueue`, `Storage.enqueue_claimed`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiki
from conftest import WorkerFactory
from helpers import StorageCalls, eventually, until


@aiki.task(name="double")
async def double(ctx: aiki.TaskContext[int]) -> int:
    return ctx.payload * 2


@aiki.workflow(name="doubling", version="1")
async def doubling(workflow_run: aiki.WorkflowRun[int]) -> int:
    return await double.run(workflow_run, payload=workflow_run.payload)


def count_run_writes(srv: aiki.Server) -> StorageCalls:
    return StorageCalls(srv.storage, "enqueue", "enqueue_claimed", "claim", "release")


async def test_a_new_run_goes_to_an_idle_worker_without_a_claim(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    await make_worker(doubling, id="idle")
    await until(lambda: srv.service.parked_polls == 1)
    writes = count_run_writes(srv)

    handle = await doubling.enqueue(client, payload=21)

    assert await handle.wait_for_completion(timeout=10) == 42
    assert writes.counts["enqueue_claimed"] == 1
    assert writes.counts["enqueue"] == writes.counts["claim"] == 0
    history = await handle.get_history()
    assert [e.kind.value for e in history][:2] == ["run_enqueued", "run_claimed"]
    assert history[1].data == {"worker_id": "idle", "attempt": 1}
    assert history[-1].kind.value == "run_completed"


async def test_a_run_with_an_idempotency_key_is_enqueued_then_claimed(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    await make_worker(doubling)
    await until(lambda: srv.service.parked_polls == 1)
    writes = count_run_writes(srv)

    handle = await doubling.enqueue(client, payload=2, idempotency_key="order-7")
    again = await doubling.enqueue(client, payload=2, idempotency_key="order-7")

    assert again.id == handle.id
    assert await handle.wait_for_completion(timeout=10) == 4
    assert writes.counts["enqueue_claimed"] == 0
    assert writes.counts["enqueue"] == 2 and writes.counts["claim"] >= 1


async def test_a_parked_poll_is_handed_one_run_and_the_others_are_claimed(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    gate = asyncio.Event()

    @aiki.task(name="held")
    async def held(ctx: aiki.TaskContext[Any]) -> str:
        await gate.wait()
        return "done"

    @aiki.workflow(name="held-runs", version="1")
    async def held_runs(workflow_run: aiki.WorkflowRun[Any]) -> str:
        result: str = await held.run(workflow_run, payload={})
        return result

    await make_worker(held_runs, max_concurrent_workflow_runs=2)
    await until(lambda: srv.service.parked_polls == 1)
    writes = count_run_writes(srv)

    handles = [await held_runs.enqueue(client) for _ in range(3)]

    async def two_running() -> bool:
        states = [(await h.get_status()).state for h in handles]
        return states.count(aiki.RunState.RUNNING) == 2

    await eventually(two_running)
    states = [(await h.get_status()).state for h in handles]
    assert states.count(aiki.RunState.PENDING) == 1  # no room for it: not handed
    assert 1 <= writes.counts["enqueue_claimed"] <= 2
    assert writes.counts["release"] == 0, "no run was made for a poll that had gone"
    gate.set()
    assert (
        await asyncio.gather(*(h.wait_for_completion(timeout=10) for h in handles)) == ["done"] * 3
    )


async def test_runs_enqueued_together_are_stored_together_and_claimed(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    for name in ("one", "two"):  # two idle workers: either could be handed a run
        await make_worker(doubling, id=name, max_concurrent_workflow_runs=20)
    await until(lambda: srv.service.parked_polls == 2)
    writes = count_run_writes(srv)

    handles = await asyncio.gather(*(doubling.enqueue(client, payload=i) for i in range(20)))

    assert await asyncio.gather(*(h.wait_for_completion(timeout=10) for h in handles)) == [
        2 * i for i in range(20)
    ]
    # The first finds the server idle and goes to a worker; the others meet in one batch.
    assert writes.counts["enqueue_claimed"] == 1
    assert writes.counts["enqueue"] >= 19


async def test_a_run_handed_to_a_poll_that_has_left_goes_back_to_be_claimed(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    storage = srv.storage
    create, reached, go_on = storage.enqueue_claimed, asyncio.Event(), asyncio.Event()

    async def gated(*args: Any) -> Any:
        reached.set()
        await go_on.wait()
        return await create(*args)

    storage.enqueue_claimed = gated  # type: ignore[method-assign,assignment]
    first = await make_worker(doubling, id="leaving")
    await until(lambda: srv.service.parked_polls == 1)
    enqueue = asyncio.ensure_future(doubling.enqueue(client, payload=5))
    await reached.wait()  # chosen for the idle worker, not yet stored
    await first.stop()  # its poll goes away meanwhile
    go_on.set()
    handle = await enqueue

    status = await handle.get_status()
    assert status.state is aiki.RunState.PENDING and status.worker_id is None
    kinds = [e.kind.value for e in await handle.get_history()]
    assert kinds == ["run_enqueued", "run_claimed", "run_released"]
    await make_worker(doubling, id="second")
    assert await handle.wait_for_completion(timeout=10) == 10
    assert (await handle.get_status()).recovery_attempts == 0
