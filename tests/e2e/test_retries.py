"""Task retry policies: in place for short delays, off the worker for long ones."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aiki
from aiki.testing import FakeClock
from conftest import WorkerFactory
from helpers import Calls, eventually, state_is


def failing_task(calls: Calls, fail_times: int, retry: aiki.Retry, exc: Exception) -> Any:
    @aiki.task(name="flaky", retry=retry)
    async def flaky(ctx: aiki.TaskContext[Any]) -> int:
        n = calls("flaky")
        assert ctx.attempt == n, "ctx.attempt counts the tries of this task"
        if n <= fail_times:
            raise exc
        return n

    return flaky


def workflow_of(task: Any, name: str) -> aiki.Workflow[Any, Any]:
    @aiki.workflow(name=name, version="1")
    async def wf(workflow_run: aiki.WorkflowRun[Any]) -> Any:
        return await task.run(workflow_run, payload={})

    return wf


async def test_short_delays_retry_in_place(client: aiki.Client, make_worker: WorkerFactory) -> None:
    calls = Calls()
    flaky = failing_task(calls, 2, aiki.Retry.fixed(max_attempts=3, delay_ms=0), OSError("down"))
    wf = workflow_of(flaky, "in-place")
    await make_worker(wf)
    handle = await wf.enqueue(client)

    assert await handle.wait_for_completion(timeout=10) == 3
    history = await handle.get_history()
    failed = [e for e in history if e.kind.value == "task_failed"]
    assert [(e.data["attempt"], e.data["final"]) for e in failed] == [(1, False), (2, False)]
    assert [e.kind.value for e in history].count("run_claimed") == 1


async def test_inline_retry_waits_on_the_clock(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls = Calls()
    flaky = failing_task(calls, 1, aiki.Retry.fixed(max_attempts=2, delay_ms=500), OSError("x"))
    wf = workflow_of(flaky, "inline-wait")
    await make_worker(wf)
    handle = await wf.enqueue(client)

    async def failed_once() -> bool:
        return calls["flaky"] == 1 and any(
            e.kind.value == "task_failed" for e in await handle.get_history()
        )

    await eventually(failed_once)
    assert (await handle.get_status()).state is aiki.RunState.RUNNING
    await clock.advance(500)
    assert await handle.wait_for_completion(timeout=10) == 2


async def test_long_delays_free_the_worker(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls = Calls()
    retry = aiki.Retry.exponential(max_attempts=3, base_delay_ms=10_000)
    flaky = failing_task(calls, 2, retry, OSError("rate limited"))
    wf = workflow_of(flaky, "backoff")
    await make_worker(wf)
    handle = await wf.enqueue(client)

    await state_is(handle, aiki.RunState.WAITING)
    status = await handle.get_status()
    assert status.wait is not None
    assert status.wait.kind.value == "retry" and status.wait.detail == "flaky"
    assert status.wait.until_ms == clock.now_ms() + 10_000
    assert status.worker_id is None

    await clock.advance(10_000)

    async def waiting_twice() -> bool:
        history = [e.kind.value for e in await handle.get_history()]
        return history.count("run_waiting") == 2

    await eventually(waiting_twice)  # second failure: waits 20 s
    assert calls["flaky"] == 2
    # 20 s from the storage time of the claim that ran the second attempt (the fake clock does
    # not move in between). That claim may have been read before `advance` and committed after
    # the timer woke the run (a long poll on PostgreSQL can), so its time is not always now.
    events = await handle.get_history()
    reclaimed = [e for e in events if e.kind.value == "run_claimed"][-1]
    assert clock.now_ms() - 10_000 <= reclaimed.at_ms <= clock.now_ms()
    second = await handle.get_status()
    assert second.wait is not None and second.wait.until_ms == reclaimed.at_ms + 20_000

    await clock.advance(20_000)
    assert await handle.wait_for_completion(timeout=10) == 3
    history = [e.kind.value for e in await handle.get_history()]
    assert history.count("run_waiting") == 2 and history.count("run_woken") == 2


async def test_exhausted_retries_fail_the_task(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    calls = Calls()
    flaky = failing_task(calls, 99, aiki.Retry.fixed(max_attempts=3, delay_ms=0), OSError("no"))
    wf = workflow_of(flaky, "exhausted")
    await make_worker(wf)
    handle = await wf.enqueue(client)

    with pytest.raises(aiki.WorkflowRunFailedError) as failed:
        await handle.wait_for_completion(timeout=10)
    assert failed.value.error.type == "aiki.errors.TaskFailedError"
    assert "'flaky' failed after 3 attempt(s): OSError: no" in failed.value.error.message
    assert calls["flaky"] == 3


async def test_non_retryable_error_ends_the_task_at_once(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    calls = Calls()
    retry = aiki.Retry.fixed(max_attempts=5, delay_ms=0)
    flaky = failing_task(calls, 99, retry, aiki.NonRetryableError("card stolen"))
    wf = workflow_of(flaky, "non-retryable")
    await make_worker(wf)
    handle = await wf.enqueue(client)

    with pytest.raises(aiki.WorkflowRunFailedError) as failed:
        await handle.wait_for_completion(timeout=10)
    assert "card stolen" in failed.value.error.message
    assert calls["flaky"] == 1


async def test_retry_later_error_sets_the_delay(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls = Calls()
    retry = aiki.Retry.fixed(max_attempts=2, delay_ms=0)
    flaky = failing_task(calls, 1, retry, aiki.RetryLaterError("busy", delay_ms=60_000))
    wf = workflow_of(flaky, "retry-later")
    await make_worker(wf)
    handle = await wf.enqueue(client)

    await state_is(handle, aiki.RunState.WAITING)
    status = await handle.get_status()
    assert status.wait is not None and status.wait.until_ms == clock.now_ms() + 60_000
    await clock.advance(60_000)
    assert await handle.wait_for_completion(timeout=10) == 2


async def test_sync_task_runs_in_a_thread(client: aiki.Client, make_worker: WorkerFactory) -> None:
    import threading

    loop_thread = threading.get_ident()

    @aiki.task(name="blocking")
    def blocking(ctx: aiki.TaskContext[Any]) -> bool:
        return threading.get_ident() != loop_thread

    wf = workflow_of(blocking, "sync-task")
    await make_worker(wf)
    handle = await wf.enqueue(client)

    assert await handle.wait_for_completion(timeout=10) is True


async def test_gathered_task_backoff_waits_for_siblings(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    """One branch going into backoff lets the sibling's attempt finish and record first."""
    calls = Calls()
    sibling_started, release = asyncio.Event(), asyncio.Event()

    @aiki.task(name="slow")
    async def slow(ctx: aiki.TaskContext[Any]) -> str:
        calls("slow")
        sibling_started.set()
        await release.wait()
        return "slow done"

    @aiki.task(name="fails", retry=aiki.Retry.fixed(max_attempts=2, delay_ms=30_000))
    async def fails(ctx: aiki.TaskContext[Any]) -> str:
        if calls("fails") == 1:
            await sibling_started.wait()
            raise OSError("try later")
        return "fails done"

    @aiki.workflow(name="gather-backoff", version="1")
    async def wf(workflow_run: aiki.WorkflowRun[Any]) -> list[str]:
        return list(
            await asyncio.gather(
                slow.run(workflow_run, payload={}), fails.run(workflow_run, payload={})
            )
        )

    await make_worker(wf)
    handle = await wf.enqueue(client)
    await sibling_started.wait()

    async def fails_recorded() -> bool:
        return any(e.kind.value == "task_failed" for e in await handle.get_history())

    await eventually(fails_recorded)
    assert (await handle.get_status()).state is aiki.RunState.RUNNING, "waits for the sibling"
    release.set()
    await state_is(handle, aiki.RunState.WAITING)
    await clock.advance(30_000)

    assert await handle.wait_for_completion(timeout=10) == ["slow done", "fails done"]
    assert calls["slow"] == 1
