"""A storage error in the middle of a worker's write (a dropped database connection) costs a
retry of that write, not the run's lease: the run goes on, and no task runs twice."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiki
from conftest import WorkerFactory
from helpers import Calls


def hiccup(srv: aiki.Server, method: str, *, applied: bool) -> list[int]:
    """Make the storage's next `method` fail once, before or after it was applied."""
    calls: list[int] = []
    original = getattr(srv.storage, method)

    async def flaky(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            if applied:
                await original(*args)
            raise aiki.StorageError("connection was closed in the middle of operation")
        return await original(*args)

    setattr(srv.storage, method, flaky)
    return calls


@pytest.mark.parametrize("method", ["finish_task", "finish"])
@pytest.mark.parametrize("applied", [False, True], ids=["not-applied", "applied"])
async def test_a_write_that_hits_a_storage_error_is_made_again(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory, method: str, applied: bool
) -> None:
    calls = Calls()

    @aiki.task(name="charge")
    async def charge(ctx: aiki.TaskContext[Any]) -> str:
        calls("charge")
        return "charged"

    @aiki.task(name="ship")
    async def ship(ctx: aiki.TaskContext[Any]) -> str:
        calls("ship")
        await asyncio.sleep(0)  # yields: charge's end, sent as ship began, goes on its own
        return "shipped"

    @aiki.workflow(name="checkout", version="1")
    async def checkout(workflow_run: aiki.WorkflowRun[Any]) -> str:
        # charge's end is written on its own as ship begins; ship's goes with the run's end.
        result: str = await charge.run(workflow_run, payload={})
        await ship.run(workflow_run, payload={})
        return result

    tries = hiccup(srv, method, applied=applied)
    await make_worker(checkout)
    handle = await checkout.enqueue(client)

    assert await handle.wait_for_completion(timeout=10) == "charged"
    assert calls.counts["charge"] == 1 and calls.counts["ship"] == 1
    assert len(tries) >= 2
    kinds = [event.kind.value for event in await handle.get_history()]
    assert kinds.count("task_completed") == 2 and kinds.count("run_completed") == 1
    assert kinds.count("run_claimed") == 1, "the run kept its worker"
