"""Cancellation reaches running code and ends the run `cancelled`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiki
from conftest import WorkerFactory
from helpers import state_is


async def test_cancel_pending_run(client: aiki.Client) -> None:
    @aiki.workflow(name="never-runs", version="1")
    async def never_runs(workflow_run: aiki.WorkflowRun[Any]) -> None:
        raise AssertionError("no worker serves this")

    handle = await never_runs.enqueue(client, allow_unknown=True)
    status = await handle.cancel("changed my mind")

    assert status.state is aiki.RunState.CANCELLED
    with pytest.raises(aiki.WorkflowRunCancelledError) as cancelled:
        await handle.wait_for_completion(timeout=10)
    assert cancelled.value.reason == "changed my mind"
    assert "changed my mind" in str(cancelled.value)


async def test_cancel_reaches_the_running_workflow_and_task(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    started = asyncio.Event()
    seen: list[str] = []

    @aiki.task(name="long")
    async def long(ctx: aiki.TaskContext[Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("task")
            raise

    @aiki.workflow(name="cancellable", version="1")
    async def cancellable(workflow_run: aiki.WorkflowRun[Any]) -> None:
        try:
            await long.run(workflow_run, payload={})
        except asyncio.CancelledError:
            seen.append("workflow")
            raise

    await make_worker(cancellable)
    handle = await cancellable.enqueue(client)
    await started.wait()

    status = await handle.cancel("user asked")
    assert status.state is aiki.RunState.RUNNING and status.cancel_requested

    with pytest.raises(aiki.WorkflowRunCancelledError) as cancelled:
        await handle.wait_for_completion(timeout=10)
    assert cancelled.value.reason == "user asked"
    assert seen == ["task", "workflow"]
    kinds = [e.kind.value for e in await handle.get_history()]
    # The task's start is written a moment after it begins (quick tasks write it with their
    # end), so it may land before or after the cancel request; the run's end comes last.
    assert kinds[-1] == "run_cancelled"
    assert kinds.index("cancel_requested") < len(kinds) - 1


async def test_cancel_waiting_run(client: aiki.Client, make_worker: WorkerFactory) -> None:
    @aiki.task(name="later", retry=aiki.Retry.fixed(max_attempts=2, delay_ms=60_000))
    async def later(ctx: aiki.TaskContext[Any]) -> None:
        raise OSError("not yet")

    @aiki.workflow(name="backs-off", version="1")
    async def backs_off(workflow_run: aiki.WorkflowRun[Any]) -> None:
        await later.run(workflow_run, payload={})

    await make_worker(backs_off)
    handle = await backs_off.enqueue(client)
    await state_is(handle, aiki.RunState.WAITING)

    assert (await handle.cancel()).state is aiki.RunState.CANCELLED
    with pytest.raises(aiki.WorkflowRunCancelledError):
        await handle.wait_for_completion(timeout=10)


async def test_cancel_of_a_finished_run_changes_nothing(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.workflow(name="quick", version="1")
    async def quick(workflow_run: aiki.WorkflowRun[Any]) -> int:
        return 7

    await make_worker(quick)
    handle = await quick.enqueue(client)
    assert await handle.wait_for_completion(timeout=10) == 7
    before = await handle.get_history()

    status = await handle.cancel()

    assert status.state is aiki.RunState.COMPLETED
    assert await handle.get_history() == before
    assert await handle.wait_for_completion(timeout=10) == 7
