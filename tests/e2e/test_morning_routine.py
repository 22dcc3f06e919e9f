"""The example workflows (`aiki.examples`), end to end on an embedded server and SQLite."""

from __future__ import annotations

from typing import Any

import aiki
from aiki.examples import (
    NewUser,
    morning_routine,
    morning_routine_v2,
    user_onboarding_v1,
    user_onboarding_v2,
)
from aiki.testing import FakeClock
from conftest import WorkerFactory
from helpers import eventually


async def test_morning_routine_end_to_end(client: aiki.Client, make_worker: WorkerFactory) -> None:
    await make_worker(morning_routine, id="worker-1")
    handle = await morning_routine.enqueue(
        client, payload={"user_id": "123"}, idempotency_key="user-123-morning"
    )

    result = await handle.wait_for_completion(timeout=10)

    assert result == {"alarm_result": "Wake up!", "stretch_result": 300}
    status = await handle.get_status()
    assert status.id == handle.id
    assert status.state is aiki.RunState.COMPLETED
    assert status.workflow == "morning-routine" and status.version == "1.0.0"


async def test_history_records_every_transition_and_attempt(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    await make_worker(morning_routine, id="worker-1")
    handle = await morning_routine.enqueue(client, payload={"user_id": "1"})
    await handle.wait_for_completion(timeout=10)

    history = await handle.get_history()

    kinds = [e.kind.value for e in history]
    assert kinds == [
        "run_enqueued",
        "run_claimed",
        "task_started",
        "task_completed",
        "task_started",
        "task_completed",
        "run_completed",
    ]
    assert [e.seq for e in history] == sorted(e.seq for e in history)
    assert history[0].state is aiki.RunState.PENDING
    assert history[-1].state is aiki.RunState.COMPLETED
    started = [e for e in history if e.kind.value == "task_started"]
    assert [e.data["task"] for e in started] == ["ring-alarm", "stretch"]
    assert all(e.data["worker_id"] == "worker-1" for e in started)
    ended = [e for e in history if e.kind.value == "task_completed"]
    assert all(e.data["duration_ms"] >= 0 and e.data["attempt"] == 1 for e in ended)


async def test_two_versions_run_side_by_side(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    await make_worker(user_onboarding_v1, user_onboarding_v2)
    v1 = await user_onboarding_v1.enqueue(client, payload={"user_id": "a"})
    v2 = await user_onboarding_v2.enqueue(client, payload=NewUser(user_id="b"))

    assert await v1.wait_for_completion(timeout=10) == {"email": "welcome email sent to user a"}
    assert await v2.wait_for_completion(timeout=10) == {
        "email": "welcome email sent to user b",
        "profile": {"user_id": "b", "profile": "created"},
    }
    assert (await v1.get_status()).version == "1.0.0"
    assert (await v2.get_status()).version == "2.0.0"


async def test_run_stays_on_its_version(client: aiki.Client, make_worker: WorkerFactory) -> None:
    """A worker serving only v2 never takes a v1 run; a v1 worker later does."""
    v1 = await user_onboarding_v1.enqueue(client, payload={"user_id": "a"}, allow_unknown=True)
    v2 = await user_onboarding_v2.enqueue(client, payload=NewUser(user_id="b"), allow_unknown=True)
    await make_worker(user_onboarding_v2)
    await v2.wait_for_completion(timeout=10)
    assert (await v1.get_status()).state is aiki.RunState.PENDING

    await make_worker(user_onboarding_v1)
    assert await v1.wait_for_completion(timeout=10) == {"email": "welcome email sent to user a"}


async def test_failed_run_reports_type_message_and_traceback(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.workflow(name="breaks", version="1")
    async def breaks(workflow_run: aiki.WorkflowRun[Any]) -> None:
        raise LookupError("no such order 42")

    await make_worker(breaks)
    handle = await breaks.enqueue(client)

    try:
        await handle.wait_for_completion(timeout=10)
    except aiki.WorkflowRunFailedError as exc:
        assert exc.error.type == "LookupError"
    else:
        raise AssertionError("the run should have failed")
    status = await handle.get_status()
    assert status.state is aiki.RunState.FAILED
    assert status.error is not None
    assert status.error.message == "no such order 42"
    assert status.error.traceback is not None and "LookupError" in status.error.traceback


async def test_get_handle_rebuilds_a_handle(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    await make_worker(morning_routine)
    handle = await morning_routine.enqueue(client, payload={})
    again = client.get_handle(handle.id)

    assert await again.wait_for_completion(timeout=10) == {
        "alarm_result": "Wake up!",
        "stretch_result": 300,
    }


async def test_unknown_run_id(client: aiki.Client) -> None:
    handle = client.get_handle("no-such-run")
    try:
        await handle.get_status()
    except aiki.RunNotFoundError as exc:
        assert "no-such-run" in str(exc)
    else:
        raise AssertionError("expected RunNotFoundError")


async def test_wait_for_completion_times_out(client: aiki.Client) -> None:
    handle = await morning_routine.enqueue(
        client, payload={}, allow_unknown=True
    )  # no worker: stays pending
    try:
        await handle.wait_for_completion(timeout=0.05)
    except TimeoutError as exc:
        assert "pending" in str(exc)
    else:
        raise AssertionError("expected TimeoutError")


async def test_status_says_when_no_live_worker_serves_the_version(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    handle = await user_onboarding_v2.enqueue(
        client, payload=NewUser(user_id="a"), allow_unknown=True
    )
    assert (await handle.get_status()).note == "no live worker serves user-onboarding@2.0.0"

    v1_worker = await make_worker(user_onboarding_v1)
    note = (await handle.get_status()).note
    assert (
        note == "no live worker serves user-onboarding@2.0.0 (live workers serve version(s) 1.0.0)"
    )

    await v1_worker.stop()
    await make_worker(user_onboarding_v2)
    assert await handle.wait_for_completion(timeout=10)
    assert (await handle.get_status()).note is None


async def test_workflows_list_live_workers_and_counts(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    w = await make_worker(morning_routine, id="w-1")
    await (await morning_routine.enqueue(client, payload={})).wait_for_completion(timeout=10)
    await user_onboarding_v1.enqueue(client, payload={"user_id": "x"}, allow_unknown=True)

    summaries = {(s.name, s.version): s for s in await client.api.list_workflows()}
    assert summaries[("morning-routine", "1.0.0")].runs == {"completed": 1}
    assert summaries[("morning-routine", "1.0.0")].live_workers == ("w-1",)
    assert summaries[("user-onboarding", "1.0.0")].runs == {"pending": 1}
    assert summaries[("user-onboarding", "1.0.0")].live_workers == ()

    await w.stop()
    workers = {x.id: x.alive for x in await client.api.list_workers()}
    assert workers == {"w-1": False}


async def test_idle_worker_is_woken_by_an_enqueue_not_by_polling(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    """With polling a minute apart, only the long-poll's wake-up can deliver the run in time."""
    slow_polls = aiki.SubscriberConfig(poll_interval_ms=60_000, long_poll_ms=60_000)
    await make_worker(morning_routine, workflow_run_subscriber=slow_polls)
    for _ in range(3):  # each time the worker is idle again in a fresh long-poll
        handle = await morning_routine.enqueue(client, payload={})
        assert await handle.wait_for_completion(timeout=5) == {
            "alarm_result": "Wake up!",
            "stretch_result": 300,
        }


async def test_morning_routine_v2_takes_a_durable_coffee_break(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    await make_worker(morning_routine, morning_routine_v2, max_concurrent_workflow_runs=1)
    t0 = clock.now_ms()
    handle = await morning_routine_v2.enqueue(client, payload={"user_id": "123"})

    async def coffee() -> bool:
        status = await handle.get_status()
        return status.wait is not None and status.wait.detail == "coffee"

    await eventually(coffee)
    status = await handle.get_status()
    assert status.state is aiki.RunState.WAITING and status.worker_id is None
    assert status.wait is not None and status.wait.kind.value == "sleep"
    assert status.wait.until_ms == t0 + 2_000
    v1 = await morning_routine.enqueue(client, payload={})  # the only slot is free meanwhile
    assert await v1.wait_for_completion(timeout=10) == {
        "alarm_result": "Wake up!",
        "stretch_result": 300,
    }

    await clock.advance(2_000)
    assert await handle.wait_for_completion(timeout=10) == {
        "alarm_result": "Wake up!",
        "stretch_result": 300,
    }
    started = [e.data["task"] for e in await handle.get_history() if e.kind.value == "task_started"]
    assert started == ["ring-alarm", "aiki.sleep/coffee", "stretch"]
