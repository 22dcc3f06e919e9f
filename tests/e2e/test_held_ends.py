"""A quick task's end rides with the run's next write (`aiki.worker._writes`).

It is sent when the next task call begins, or taken back by that task's own end if the send
had not begun (the task never yielded to the event loop); the run's end carries what is held
then, or it is sent on its own a moment later. The writes are those storage sees, counted at
the storage of the server.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiki
from aiki._core.models import RunOutcome
from aiki.testing import FakeClock
from aiki.worker import _writes
from conftest import WorkerFactory
from helpers import Calls, StorageCalls, eventually, tasks_recorded


def count_writes(srv: aiki.Server) -> StorageCalls:
    """Count the storage's task and run writes."""
    return StorageCalls(srv.storage, "start_task", "finish_task", "finish")


def run_ends(writes: StorageCalls) -> list[RunOutcome]:
    """The outcome each run end written so far carried."""
    return [args[1] for args in writes.args["finish"]]


@aiki.task(name="quick")
async def quick(ctx: aiki.TaskContext[Any]) -> str:
    return "done"


async def test_a_run_of_quick_tasks_writes_once(
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

    writes = count_writes(srv)
    await make_worker(three_steps)
    handle = await three_steps.enqueue(client)

    assert await handle.wait_for_completion(timeout=10) == [0, 10, 20]
    # No step yields to the event loop: each takes back the send its start let through, and
    # the three ends go with the run's end.
    assert writes.counts == Counter(finish=1)
    (outcome,) = run_ends(writes)
    assert [end.result_json for end in outcome.task_ends] == ["0", "10", "20"]
    history = await handle.get_history()
    ends = [e for e in history if e.kind.value == "task_completed"]
    assert len({e.data["digest"] for e in ends}) == len(ends) == 3  # each recorded once
    assert calls.counts["step"] == 3
    assert [e.seq for e in history] == list(range(1, len(history) + 1))


async def test_a_task_end_is_sent_while_the_next_task_waits(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    gate = asyncio.Event()

    @aiki.task(name="waits")
    async def waits(ctx: aiki.TaskContext[Any]) -> str:
        await gate.wait()  # yields: whatever it does, `quick`'s end is on its way first
        return "waited"

    @aiki.workflow(name="quick-then-waits", version="1")
    async def quick_then_waits(workflow_run: aiki.WorkflowRun[Any]) -> list[str]:
        return [
            await quick.run(workflow_run, payload={}),
            await waits.run(workflow_run, payload={}),
        ]

    writes = count_writes(srv)
    await make_worker(quick_then_waits)
    handle = await quick_then_waits.enqueue(client)

    await tasks_recorded(handle, 1)  # while `waits` waits
    gate.set()
    assert await handle.wait_for_completion(timeout=10) == ["done", "waited"]
    assert writes.counts["finish_task"] == 1
    assert [[end.address.task for end in o.task_ends] for o in run_ends(writes)] == [["waits"]]


async def test_many_held_ends_are_written_in_parts(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.task(name="numbered")
    async def numbered(ctx: aiki.TaskContext[int]) -> int:
        return ctx.payload

    count = 2 * _writes._MAX_HELD_ENDS + 3

    @aiki.workflow(name="many-steps", version="1")
    async def many_steps(workflow_run: aiki.WorkflowRun[Any]) -> int:
        return sum([await numbered.run(workflow_run, payload=i) for i in range(count)])

    writes = count_writes(srv)
    await make_worker(many_steps)
    handle = await many_steps.enqueue(client)

    assert await handle.wait_for_completion(timeout=30) == sum(range(count))
    # Two full parts on their own; the rest with the run's end.
    assert writes.counts == Counter(finish_task=2 * _writes._MAX_HELD_ENDS, finish=1)
    assert [end.result_json for end in run_ends(writes)[0].task_ends] == [
        str(i) for i in range(2 * _writes._MAX_HELD_ENDS, count)
    ]
    history = await handle.get_history()
    results = [e.data["digest"] for e in history if e.kind.value == "task_completed"]
    assert len(set(results)) == len(results) == count


async def test_held_ends_stay_within_the_servers_result_limit(
    tmp_path: Path, clock: FakeClock
) -> None:
    @aiki.task(name="wordy")
    async def wordy(ctx: aiki.TaskContext[int]) -> str:
        return str(ctx.payload) * 400  # 402 bytes of JSON: two fit in the limit, not three

    @aiki.workflow(name="wordy-steps", version="1")
    async def wordy_steps(workflow_run: aiki.WorkflowRun[Any]) -> int:
        return len([await wordy.run(workflow_run, payload=i) for i in range(5)])

    async with aiki.server(
        f"sqlite:///{tmp_path}/small.db", clock=clock, max_payload_bytes=1_000
    ) as small:
        writes = count_writes(small)
        client = await aiki.create_client(server=small)
        worker = await aiki.worker(client, clock=clock, graceful_shutdown_timeout_ms=0)
        worker.registry.add(wordy_steps)
        await worker.start()
        try:
            handle = await wordy_steps.enqueue(client)
            assert await handle.wait_for_completion(timeout=10) == 5
        finally:
            await worker.stop()
    # Steps 0 and 1 go on their own as step 2 would overfill the write, 2 and 3 as 4 would.
    assert writes.counts == Counter(finish_task=4, finish=1)
    assert [end.result_json for end in run_ends(writes)[0].task_ends] == [f'"{"4" * 400}"']


async def test_a_task_end_is_written_soon_when_the_workflow_writes_nothing_more(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    gate = asyncio.Event()

    @aiki.workflow(name="dwells", version="1")
    async def dwells(workflow_run: aiki.WorkflowRun[Any]) -> str:
        result: str = await quick.run(workflow_run, payload={})
        await gate.wait()  # the workflow's own code, taking its time: no write comes
        return result

    writes = count_writes(srv)
    await make_worker(dwells)
    handle = await dwells.enqueue(client)

    await tasks_recorded(handle, 1)  # on its own, while the workflow still runs
    assert writes.counts["finish_task"] == 1
    gate.set()
    assert await handle.wait_for_completion(timeout=10) == "done"
    assert [o.task_ends for o in run_ends(writes)] == [()]


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
