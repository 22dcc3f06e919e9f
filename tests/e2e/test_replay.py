"""Replay with content-addressed memoization (DESIGN.md §3).

Each test runs a workflow until it parks at a gate, kills the worker as a crash would,
changes the workflow's code (the `Plan`), and lets a second worker resume the run after the
first one's lease expires.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

import aiki
from aiki.testing import FakeClock, kill_worker
from conftest import WorkerFactory
from helpers import Calls, eventually, tasks_recorded

LEASE = aiki.WorkflowRunConfig(heartbeat_interval_ms=1_000, lease_ms=3_000)


@dataclass
class Plan:
    """The workflow's code, as data a test can change between executions."""

    steps: list[str]
    park: bool = True  # wait at the gate before returning
    parked: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)


def make_workflow(plan: Plan, calls: Calls) -> aiki.Workflow[Any, list[Any]]:
    @aiki.task(name="step")
    async def step(ctx: aiki.TaskContext[dict[str, str]]) -> str:
        return f"{ctx.payload['name']}#{calls(ctx.payload['name'])}"

    @aiki.workflow(name="planned", version="1")
    async def planned(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        results = [await step.run(workflow_run, payload={"name": s}) for s in plan.steps]
        if plan.park:
            plan.parked.set()
            await plan.gate.wait()
        return results

    return planned


async def crash_and_resume(
    plan: Plan,
    workflow: aiki.Workflow[Any, Any],
    client: aiki.Client,
    make_worker: WorkerFactory,
    clock: FakeClock,
    *,
    new_steps: list[str],
) -> aiki.RunHandle[Any]:
    first = await make_worker(workflow, workflow_run=LEASE)
    handle = await workflow.enqueue(client)
    await plan.parked.wait()
    await tasks_recorded(handle, len(plan.steps))
    await kill_worker(first)

    plan.steps = new_steps
    plan.park = False
    await make_worker(workflow, workflow_run=LEASE)
    await clock.advance(3_001)  # the first worker's lease expires
    return handle


async def test_completed_tasks_are_not_run_again(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    plan, calls = Plan(["a", "b"]), Calls()
    workflow = make_workflow(plan, calls)
    handle = await crash_and_resume(
        plan, workflow, client, make_worker, clock, new_steps=["a", "b"]
    )

    assert await handle.wait_for_completion(timeout=10) == ["a#1", "b#1"]
    assert calls["a"] == 1 and calls["b"] == 1
    assert (await handle.get_status()).recovery_attempts == 1


async def test_reordering_recorded_calls_is_safe(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    plan, calls = Plan(["a", "b"]), Calls()
    workflow = make_workflow(plan, calls)
    handle = await crash_and_resume(
        plan, workflow, client, make_worker, clock, new_steps=["b", "a"]
    )

    assert await handle.wait_for_completion(timeout=10) == ["b#1", "a#1"]
    assert calls["a"] == 1 and calls["b"] == 1


async def test_appending_a_call_runs_only_the_new_one(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    plan, calls = Plan(["a", "b"]), Calls()
    workflow = make_workflow(plan, calls)
    handle = await crash_and_resume(
        plan, workflow, client, make_worker, clock, new_steps=["a", "b", "c"]
    )

    assert await handle.wait_for_completion(timeout=10) == ["a#1", "b#1", "c#1"]
    assert calls["a"] == 1 and calls["b"] == 1 and calls["c"] == 1


async def test_removing_a_finished_call_is_safe(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    plan, calls = Plan(["a", "b"]), Calls()
    workflow = make_workflow(plan, calls)
    handle = await crash_and_resume(plan, workflow, client, make_worker, clock, new_steps=["b"])

    assert await handle.wait_for_completion(timeout=10) == ["b#1"]
    assert calls["a"] == 1 and calls["b"] == 1


async def test_inserting_a_call_before_recorded_ones_fails_the_run(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    plan, calls = Plan(["a", "b"]), Calls()
    workflow = make_workflow(plan, calls)
    handle = await crash_and_resume(
        plan, workflow, client, make_worker, clock, new_steps=["a", "new", "b"]
    )

    with pytest.raises(aiki.WorkflowRunFailedError) as failed:
        await handle.wait_for_completion(timeout=10)
    error = failed.value.error
    assert error.type == "aiki.errors.NondeterminismError"
    assert "new call to task 'step'" in error.message
    assert "unconsumed" in error.message
    assert calls["new"] == 0, "the diverging task must not run"


async def test_changed_payload_is_a_divergence_even_if_caught(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    """Workflow code that swallows the error still cannot complete the run."""
    calls = Calls()
    payload = "x"
    parked = asyncio.Event()

    @aiki.task(name="echo")
    async def echo(ctx: aiki.TaskContext[str]) -> str:
        calls(ctx.payload)
        return ctx.payload

    @aiki.workflow(name="swallow", version="1")
    async def swallow(workflow_run: aiki.WorkflowRun[Any]) -> str:
        try:
            value = await echo.run(workflow_run, payload=payload)
        except aiki.NondeterminismError:
            return "swallowed"
        await echo.run(workflow_run, payload="x-again")
        parked.set()
        await asyncio.Event().wait()  # the crash happens here
        return value

    first = await make_worker(swallow, workflow_run=LEASE)
    handle = await swallow.enqueue(client)
    await parked.wait()
    await tasks_recorded(handle, 2)
    await kill_worker(first)
    payload = "y"  # the deploy changed the first call's payload
    await make_worker(swallow, workflow_run=LEASE)
    await clock.advance(3_001)

    with pytest.raises(aiki.WorkflowRunFailedError) as failed:
        await handle.wait_for_completion(timeout=10)
    assert failed.value.error.type == "aiki.errors.NondeterminismError"
    assert calls["y"] == 0


async def test_recorded_final_failure_is_raised_again_without_running(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls = Calls()
    parked, gate = asyncio.Event(), asyncio.Event()

    @aiki.task(name="flaky")
    async def flaky(ctx: aiki.TaskContext[Any]) -> None:
        calls("flaky")
        raise ValueError("card declined")

    @aiki.workflow(name="handles-failure", version="1")
    async def handles_failure(workflow_run: aiki.WorkflowRun[Any]) -> str:
        try:
            await flaky.run(workflow_run, payload={})
        except aiki.TaskFailedError as exc:
            outcome = f"{exc.task_name}: {exc.error.type}: {exc.error.message}"
        if not gate.is_set():
            parked.set()
            await gate.wait()
        return outcome

    first = await make_worker(handles_failure, workflow_run=LEASE)
    handle = await handles_failure.enqueue(client)
    await parked.wait()
    await kill_worker(first)
    gate.set()
    await make_worker(handles_failure, workflow_run=LEASE)
    await clock.advance(3_001)

    assert await handle.wait_for_completion(timeout=10) == "flaky: ValueError: card declined"
    assert calls["flaky"] == 1


async def test_gather_runs_calls_concurrently_and_replays_them(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls = Calls()
    parked, gate = asyncio.Event(), asyncio.Event()
    running = 0
    peak = 0
    all_started = asyncio.Event()

    @aiki.task(name="count")
    async def count(ctx: aiki.TaskContext[dict[str, str]]) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            all_started.set()
        await all_started.wait()  # only returns once all three run at the same time
        running -= 1
        return f"{ctx.payload['k']}#{calls(ctx.payload['k'])}"

    async def branch(workflow_run: aiki.WorkflowRun[Any], k: str) -> list[str]:
        first = await count.run(workflow_run, payload={"k": k})
        return [first]

    @aiki.workflow(name="fan-out", version="1")
    async def fan_out(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        results = await asyncio.gather(
            count.run(workflow_run, payload={"k": "same"}),
            count.run(workflow_run, payload={"k": "same"}),
            branch(workflow_run, "other"),
        )
        if not gate.is_set():
            parked.set()
            await gate.wait()
        return list(results)

    first = await make_worker(fan_out, workflow_run=LEASE)
    handle = await fan_out.enqueue(client)
    await parked.wait()
    await tasks_recorded(handle, 3)
    await kill_worker(first)
    gate.set()
    await make_worker(fan_out, workflow_run=LEASE)
    await clock.advance(3_001)

    result = await handle.wait_for_completion(timeout=10)
    assert peak == 3
    assert sorted(result[:2]) == ["same#1", "same#2"]
    assert result[2] == ["other#1"]
    assert calls["same"] == 2 and calls["other"] == 1


async def test_gather_branch_with_new_call_waits_for_sibling_replays(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    """A branch reaching a new call must not judge divergence before siblings replay."""
    calls = Calls()
    parked = asyncio.Event()
    resumed = {"value": False}

    @aiki.task(name="t")
    async def t(ctx: aiki.TaskContext[str]) -> str:
        calls(ctx.payload)
        if ctx.payload == "second" and not resumed["value"]:
            parked.set()
            await asyncio.Event().wait()  # the crash happens here
        return ctx.payload

    async def left(workflow_run: aiki.WorkflowRun[Any]) -> str:
        await t.run(workflow_run, payload="first")
        return await t.run(workflow_run, payload="second")

    async def right(workflow_run: aiki.WorkflowRun[Any]) -> str:
        await asyncio.sleep(0)  # reach its recorded call a turn later than `left` goes on
        return await t.run(workflow_run, payload="other")

    @aiki.workflow(name="branches", version="1")
    async def branches(workflow_run: aiki.WorkflowRun[Any]) -> list[str]:
        return list(await asyncio.gather(left(workflow_run), right(workflow_run)))

    first = await make_worker(branches, workflow_run=LEASE)
    handle = await branches.enqueue(client)
    await parked.wait()

    # `other` ran, but its end may still be on its way to storage (on PostgreSQL it can be):
    # kill the worker only once both `first` and `other` are recorded as completed.
    async def other_recorded() -> bool:
        history = await handle.get_history()
        return sum(e.kind.value == "task_completed" for e in history) == 2

    await eventually(other_recorded)
    await kill_worker(first)
    resumed["value"] = True
    await make_worker(branches, workflow_run=LEASE)
    await clock.advance(3_001)

    assert await handle.wait_for_completion(timeout=10) == ["second", "other"]
    assert calls["first"] == 1 and calls["other"] == 1 and calls["second"] == 2
