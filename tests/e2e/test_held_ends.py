"""A quick task's end rides with the run's next write (`aiki.worker._writes`).

It is sent when the next task call begins, carried by the run's end, or sent on its own a
moment later; the writes are those storage sees, counted at the storage of the server.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiki
from aiki._core.models import RunOutcome
from conftest import WorkerFactory
from helpers import Calls, eventually, tasks_recorded


def count_writes(srv: aiki.Server) -> tuple[Counter[str], list[RunOutcome]]:
    """Count the storage's task and run writes; keep each run end's outcome."""
    writes: Counter[str] = Counter()
    outcomes: list[RunOutcome] = []
    storage = srv.storage
    for method in ("start_task", "finish_task", "finish"):
        original = getattr(storage, method)

        async def counted(*args: Any, _method: str = method, _original: Any = original) -> Any:
            writes[_method] += 1
            if _method == "finish":
                outcomes.append(args[1])
            return await _original(*args)

        setattr(storage, method, counted)
    return writes, outcomes


@aiki.task(name="quick")
async def quick(ctx: aiki.TaskContext[Any]) -> str:
    return "done"


async def test_a_run_of_quick_tasks_writes_once_per_task_call_after_the_first(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    calls = Calls()

    @aiki.task(name="step")
    async def step(ctx: aiki.TaskContext[int]) -> int:
        calls("step")
        return ctx.payload * 10

    @aiki.workflow(name="three-steps", version="1")
    async def three_steps(workflow_run: aiki.WorkflowRun[Any]) -> list[int]:
        return [await step.run(workflow_run, payload=i) for i in range(3)]

    writes, outcomes = count_writes(srv)
    await make_worker(three_steps)
    handle = await three_steps.enqueue(client)

    assert await handle.wait_for_completion(timeout=10) == [0, 10, 20]
    # Steps 0 and 1 are written as the next begins; step 2 goes with the run's end.
    assert writes == Counter(finish_task=2, finish=1)
    (outcome,) = outcomes
    assert [end.address.task for end in outcome.task_ends] == ["step"]
    assert outcome.task_ends[0].result_json == "20"
    history = await handle.get_history()
    ends = [e for e in history if e.kind.value == "task_completed"]
    assert len({e.data["digest"] for e in ends}) == len(ends) == 3  # each recorded once
    assert calls.counts["step"] == 3
    assert [e.seq for e in history] == list(range(1, len(history) + 1))


async def test_a_task_end_is_written_soon_when_the_workflow_writes_nothing_more(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    gate = asyncio.Event()

    @aiki.workflow(name="dwells", version="1")
    async def dwells(workflow_run: aiki.WorkflowRun[Any]) -> str:
        result: str = await quick.run(workflow_run, payload={})
        await gate.wait()  # the workflow's own code, taking its time: no write comes
        return result

    writes, outcomes = count_writes(srv)
    await make_worker(dwells)
    handle = await dwells.enqueue(client)

    await tasks_recorded(handle, 1)  # on its own, while the workflow still runs
    assert writes["finish_task"] == 1
    gate.set()
    assert await handle.wait_for_completion(timeout=10) == "done"
    assert [o.task_ends for o in outcomes] == [()]


async def test_a_task_end_is_written_before_the_run_waits(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.workflow(name="then-sleeps", version="1")
    async def then_sleeps(workflow_run: aiki.WorkflowRun[Any]) -> str:
        result: str = await quick.run(workflow_run, payload={})
        await workflow_run.sleep("nap", 3_600_000)
        return result

    await make_worker(then_sleeps)
    handle = await then_sleeps.enqueue(client)

    async def waiting() -> bool:
        return (await handle.get_status()).state is aiki.RunState.WAITING

    await eventually(waiting)
    kinds = [e.kind.value for e in await handle.get_history()]
    assert kinds.index("task_completed") < kinds.index("run_waiting")
