"""Leases, crash recovery, fencing of stale workers and graceful shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiki
from aiki._core.clock import SystemClock
from aiki._core.models import Lease, RunOutcome
from aiki._core.states import RunState
from aiki.server._timers import _IDLE_MS
from aiki.testing import FakeClock, kill_worker
from conftest import WorkerFactory
from helpers import Calls, eventually, state_is, tasks_recorded

LEASE = aiki.WorkflowRunConfig(heartbeat_interval_ms=1_000, lease_ms=3_000)


def two_step_workflow(calls: Calls, started: asyncio.Event, release: asyncio.Event) -> Any:
    @aiki.task(name="charge")
    async def charge(ctx: aiki.TaskContext[Any]) -> str:
        calls("charge")
        return "charged"

    @aiki.task(name="ship")
    async def ship(ctx: aiki.TaskContext[Any]) -> str:
        calls("ship")
        started.set()
        await release.wait()
        return "shipped"

    @aiki.workflow(name="order", version="1")
    async def order(workflow_run: aiki.WorkflowRun[Any]) -> list[str]:
        return [
            await charge.run(workflow_run, payload={}),
            await ship.run(workflow_run, payload={}),
        ]

    return order


async def test_crashed_worker_run_is_finished_by_another(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls, started, release = Calls(), asyncio.Event(), asyncio.Event()
    order = two_step_workflow(calls, started, release)
    first = await make_worker(order, id="first", workflow_run=LEASE)
    handle = await order.enqueue(client)
    await started.wait()
    await tasks_recorded(handle, 1)  # `charge`'s end, sent as `ship` began, is in storage

    await kill_worker(first)  # mid-task: `ship` never reports
    started.clear()
    await make_worker(order, id="second", workflow_run=LEASE)
    assert (await handle.get_status()).state is RunState.RUNNING
    await clock.advance(3_001)
    await started.wait()
    release.set()

    assert await handle.wait_for_completion(timeout=10) == ["charged", "shipped"]
    assert calls["charge"] == 1, "a completed task never runs again"
    assert calls["ship"] == 2, "the interrupted task runs again"
    status = await handle.get_status()
    assert status.recovery_attempts == 1
    history = await handle.get_history()
    expired = [e for e in history if e.kind.value == "lease_expired"]
    assert len(expired) == 1 and expired[0].data["worker_id"] == "first"
    claims = [e.data["worker_id"] for e in history if e.kind.value == "run_claimed"]
    assert claims == ["first", "second"]


async def test_with_the_defaults_a_crashed_worker_is_replaced_within_15_s(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    """No `workflow_run=`: the default lease. The dead worker also stops counting as alive."""
    calls, started, release = Calls(), asyncio.Event(), asyncio.Event()
    order = two_step_workflow(calls, started, release)
    first = await make_worker(order, id="first")
    handle = await order.enqueue(client)
    await started.wait()

    await kill_worker(first)
    started.clear()
    await make_worker(order, id="second")
    assert {w.id: w.alive for w in await client.api.list_workers()} == {
        "first": True,
        "second": True,
    }
    # The server looks for expired leases at least once a second: a lease that has run out 14 s
    # after the crash is noticed by 15 s.
    assert _IDLE_MS <= 1_000
    await clock.advance(14_000)
    async with asyncio.timeout(5):
        await started.wait()  # `ship` again, on the second worker
    release.set()
    assert await handle.wait_for_completion(timeout=10) == ["charged", "shipped"]

    async def only_second_alive() -> bool:
        alive = {w.id: w.alive for w in await client.api.list_workers()}
        return alive == {"first": False, "second": True}

    await eventually(only_second_alive)  # the second's heartbeat at 14 s lands meanwhile


async def test_heartbeats_keep_the_lease(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls, started, release = Calls(), asyncio.Event(), asyncio.Event()
    order = two_step_workflow(calls, started, release)
    await make_worker(order, workflow_run=LEASE)
    handle = await order.enqueue(client)
    await started.wait()

    for _ in range(10):  # 10 s of storage time: far past one lease, heartbeat every second
        await clock.advance(1_000)

        async def lease_renewed() -> bool:
            status = await handle.get_status()
            return bool(status.lease_expires_at_ms == clock.now_ms() + 3_000)

        await eventually(lease_renewed)  # the heartbeat landed before time moves on
    release.set()

    assert await handle.wait_for_completion(timeout=10) == ["charged", "shipped"]
    assert (await handle.get_status()).recovery_attempts == 0
    assert calls["ship"] == 1


async def test_stale_worker_cannot_overwrite_the_new_owner(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    """A paused worker (its clock stopped: no heartbeats) loses its lease and all its writes."""
    calls, started, release = Calls(), asyncio.Event(), asyncio.Event()
    order = two_step_workflow(calls, started, release)
    paused_clock = FakeClock(clock.now_ms())  # never advanced: this worker never heartbeats
    await make_worker(
        order, id="paused", workflow_run=LEASE, clock=paused_clock, max_concurrent_workflow_runs=1
    )
    handle = await order.enqueue(client)
    await started.wait()
    # `charge`'s end, sent as `ship` began, is stored before the lease runs out: otherwise
    # the paused worker's write of it fails, and it claims the run again itself.
    await tasks_recorded(handle, 1)

    started.clear()
    await make_worker(order, id="new-owner", workflow_run=LEASE)
    await clock.advance(3_001)
    await started.wait()  # the new owner runs `ship` too; both are blocked in it
    release.set()  # both finish `ship`; only the new owner's report may count

    assert await handle.wait_for_completion(timeout=10) == ["charged", "shipped"]
    history = await handle.get_history()
    after_expiry = history[[e.kind.value for e in history].index("lease_expired") + 1 :]
    writers = {e.data.get("worker_id") for e in after_expiry if e.kind.value.startswith("task_")}
    assert writers == {"new-owner"}
    completed = [
        e for e in history if e.kind.value == "task_completed" and e.data["task"] == "ship"
    ]
    assert len(completed) == 1


async def test_stale_revision_write_is_refused_without_change(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls, started, release = Calls(), asyncio.Event(), asyncio.Event()
    order = two_step_workflow(calls, started, release)
    first = await make_worker(order, workflow_run=LEASE)
    handle = await order.enqueue(client)
    await started.wait()
    old = await handle.get_status()
    await kill_worker(first)
    await clock.advance(3_001)
    await state_is(handle, RunState.PENDING)
    before = (await handle.get_status(), await handle.get_history())

    with pytest.raises(aiki.LeaseLostError):
        await srv.service.finish(
            Lease(run_id=handle.id, revision=old.revision),
            RunOutcome(state=RunState.COMPLETED, result_json='"forged"'),
        )

    assert (await handle.get_status(), await handle.get_history()) == before


async def test_run_fails_after_max_recovery_attempts(tmp_path: Any, clock: FakeClock) -> None:
    calls, started, release = Calls(), asyncio.Event(), asyncio.Event()
    order = two_step_workflow(calls, started, release)
    async with aiki.server(
        f"sqlite:///{tmp_path}/poison.db", clock=clock, max_recovery_attempts=2
    ) as server:
        client = await aiki.create_client(server=server)
        handle = await order.enqueue(client, allow_unknown=True)
        for _ in range(3):  # three workers in a row die in `ship`
            w = await aiki.worker(client, clock=clock, workflow_run=LEASE)
            w.registry.add(order)
            await w.start()
            await started.wait()
            started.clear()
            await tasks_recorded(handle, 1)
            await kill_worker(w)
            await clock.advance(3_001)

        with pytest.raises(aiki.WorkflowRunFailedError) as failed:
            await handle.wait_for_completion(timeout=10)
        assert "max_recovery_attempts" in failed.value.error.message
        assert calls["ship"] == 3 and calls["charge"] == 1


async def test_stop_lets_running_work_finish_within_the_grace_period(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    calls, started, release = Calls(), asyncio.Event(), asyncio.Event()
    order = two_step_workflow(calls, started, release)
    w = await make_worker(order, graceful_shutdown_timeout_ms=60_000)
    handle = await order.enqueue(client)
    await started.wait()

    stopping = asyncio.create_task(w.stop())
    await asyncio.sleep(0)
    assert not stopping.done()
    release.set()
    await stopping

    assert (await handle.get_status()).state is RunState.COMPLETED


async def test_stop_hands_back_what_outlives_the_grace_period(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls, started, release = Calls(), asyncio.Event(), asyncio.Event()
    order = two_step_workflow(calls, started, release)
    # The grace period runs on the real clock here: 50 ms, then the run is handed back.
    w = await make_worker(order, graceful_shutdown_timeout_ms=50, clock=SystemClock())
    handle = await order.enqueue(client)
    await started.wait()

    await w.stop()

    status = await handle.get_status()
    assert status.state is RunState.PENDING and status.recovery_attempts == 0
    assert (await handle.get_history())[-1].kind.value == "run_released"

    started.clear()
    release.set()
    await make_worker(order)
    assert await handle.wait_for_completion(timeout=10) == ["charged", "shipped"]
    assert calls["charge"] == 1 and calls["ship"] == 2


async def test_at_most_max_concurrent_runs_at_once(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    running, peak = 0, 0
    release = asyncio.Event()
    three_running = asyncio.Event()

    @aiki.task(name="hold")
    async def hold(ctx: aiki.TaskContext[Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            three_running.set()
        await release.wait()
        running -= 1

    @aiki.workflow(name="holder", version="1")
    async def holder(workflow_run: aiki.WorkflowRun[Any]) -> None:
        await hold.run(workflow_run, payload={"n": workflow_run.payload})

    w = await make_worker(holder, max_concurrent_workflow_runs=3)
    handles = [await holder.enqueue(client, payload=i) for i in range(8)]
    await three_running.wait()
    states = [(await h.get_status()).state for h in handles]
    assert states.count(RunState.RUNNING) == 3
    assert states.count(RunState.PENDING) == 5
    assert w.active_runs == 3

    release.set()
    for h in handles:
        await h.wait_for_completion(timeout=10)
    assert peak == 3
