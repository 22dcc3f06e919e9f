"""Durable sleep (`workflow_run.sleep`): in place when short, off the worker when long, and
never started over on replay. Time only moves when a test advances the fake clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest

import aiki
from aiki.cli._runs import _describe_sleeps
from aiki.examples import morning_routine_v2
from aiki.testing import FakeClock, kill_worker
from conftest import WorkerFactory
from helpers import Calls, eventually, state_is, tasks_recorded

LEASE = aiki.WorkflowRunConfig(heartbeat_interval_ms=1_000, lease_ms=3_000)
SLEEP_EVENTS = ("task_started", "task_completed")


def step_task(calls: Calls) -> aiki.Task[dict[str, str], str]:
    @aiki.task(name="step")
    async def step(ctx: aiki.TaskContext[dict[str, str]]) -> str:
        return f"{ctx.payload['name']}#{calls(ctx.payload['name'])}"

    return step


def sleep_records(history: list[aiki.HistoryEvent]) -> list[tuple[str, int, int]]:
    """(task, index, duration_ms) of every sleep recorded in `history`."""
    return [
        (e.data["task"], e.data["index"], e.data["duration_ms"])
        for e in history
        if e.kind.value == "task_completed" and e.data["task"].startswith("aiki.sleep/")
    ]


async def recorded_sleeps(handle: aiki.RunHandle[Any], count: int) -> None:
    async def check() -> bool:
        return len(sleep_records(await handle.get_history())) >= count

    await eventually(check)


async def waiting_until(handle: aiki.RunHandle[Any], until_ms: int) -> aiki.RunStatus:
    """Wait for the run to be `waiting` for a sleep until `until_ms`; return its status."""

    async def check() -> bool:
        status = await handle.get_status()
        return status.wait is not None and status.wait.until_ms == until_ms

    await eventually(check)
    status = await handle.get_status()
    assert status.state is aiki.RunState.WAITING and status.wait is not None
    assert status.wait.kind.value == "sleep"
    return status


# --- in place and off the worker ------------------------------------------------------------


async def test_short_sleep_waits_in_place_on_the_clock(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls = Calls()
    step = step_task(calls)

    @aiki.workflow(name="nap", version="1")
    async def nap(workflow_run: aiki.WorkflowRun[Any]) -> list[str]:
        before = await step.run(workflow_run, payload={"name": "before"})
        await workflow_run.sleep("nap", timedelta(milliseconds=500))
        after = await step.run(workflow_run, payload={"name": "after"})
        return [before, after]

    await make_worker(nap)
    handle = await nap.enqueue(client)
    await recorded_sleeps(handle, 1)
    await clock.advance(499)
    for _ in range(5):
        await asyncio.sleep(0)
    assert calls["after"] == 0, "the sleep is not over yet"
    assert (await handle.get_status()).state is aiki.RunState.RUNNING

    await clock.advance(1)
    assert await handle.wait_for_completion(timeout=10) == ["before#1", "after#1"]
    history = await handle.get_history()
    kinds = [e.kind.value for e in history]
    assert kinds.count("run_claimed") == 1 and "run_waiting" not in kinds
    assert sleep_records(history) == [("aiki.sleep/nap", 0, 500)]


async def test_long_sleep_frees_the_worker_until_the_storage_clock_says(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    @aiki.workflow(name="coffee-break", version="1")
    async def coffee_break(workflow_run: aiki.WorkflowRun[Any]) -> str:
        await workflow_run.sleep("coffee", timedelta(minutes=5))
        return "refreshed"

    @aiki.workflow(name="quick", version="1")
    async def quick(workflow_run: aiki.WorkflowRun[Any]) -> int:
        return 7

    await make_worker(coffee_break, quick, max_concurrent_workflow_runs=1)
    t0 = clock.now_ms()
    handle = await coffee_break.enqueue(client)

    status = await waiting_until(handle, t0 + 300_000)
    assert status.wait is not None and status.wait.detail == "coffee"
    assert status.worker_id is None
    other = await quick.enqueue(client)
    assert await other.wait_for_completion(timeout=10) == 7, "the only slot is free"

    await clock.advance(299_999)
    for _ in range(5):
        await asyncio.sleep(0)
    assert (await handle.get_status()).state is aiki.RunState.WAITING
    await clock.advance(1)
    assert await handle.wait_for_completion(timeout=10) == "refreshed"

    history = await handle.get_history()
    waiting = [e for e in history if e.kind.value == "run_waiting"]
    assert [e.data for e in waiting] == [
        {"kind": "sleep", "until_ms": t0 + 300_000, "detail": "coffee"}
    ]
    kinds = [e.kind.value for e in history]
    assert kinds.count("run_woken") == 1 and kinds.count("run_claimed") == 2
    assert sleep_records(history) == [("aiki.sleep/coffee", 0, 300_000)], "recorded once"


async def test_zero_and_number_durations(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    @aiki.workflow(name="numbers", version="1")
    async def numbers(workflow_run: aiki.WorkflowRun[Any]) -> str:
        await workflow_run.sleep("none", 0)
        await workflow_run.sleep("seconds", 2.5)  # a number is seconds
        return "done"

    await make_worker(numbers)
    t0 = clock.now_ms()
    handle = await numbers.enqueue(client)
    await waiting_until(handle, t0 + 2_500)
    await clock.advance(2_500)
    assert await handle.wait_for_completion(timeout=10) == "done"
    assert sleep_records(await handle.get_history()) == [
        ("aiki.sleep/none", 0, 0),
        ("aiki.sleep/seconds", 0, 2_500),
    ]


async def test_sleep_in_a_loop_records_each_occurrence(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls = Calls()
    step = step_task(calls)

    @aiki.workflow(name="ticks", version="1")
    async def ticks(workflow_run: aiki.WorkflowRun[Any]) -> list[str]:
        done = []
        for _ in range(3):
            done.append(await step.run(workflow_run, payload={"name": "tick"}))
            await workflow_run.sleep("between", timedelta(seconds=10))
        return done

    await make_worker(ticks)
    t0 = clock.now_ms()
    handle = await ticks.enqueue(client)
    for n in range(3):
        await waiting_until(handle, t0 + 10_000 * (n + 1))
        assert calls["tick"] == n + 1, "recorded ticks are replayed, not run again"
        await clock.advance(10_000)

    assert await handle.wait_for_completion(timeout=10) == ["tick#1", "tick#2", "tick#3"]
    assert sleep_records(await handle.get_history()) == [
        ("aiki.sleep/between", n, 10_000) for n in range(3)
    ]


async def test_gathered_sleeps_each_resume_their_branch_in_time(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls = Calls()
    step = step_task(calls)

    @aiki.workflow(name="gathered", version="1")
    async def gathered(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        async def after(name: str, duration: timedelta) -> str:
            await workflow_run.sleep(name, duration)
            return await step.run(workflow_run, payload={"name": name})

        return list(
            await asyncio.gather(
                after("short", timedelta(milliseconds=300)),  # would wait in place alone
                after("medium", timedelta(seconds=10)),
                after("long", timedelta(seconds=60)),
            )
        )

    await make_worker(gathered)
    t0 = clock.now_ms()
    handle = await gathered.enqueue(client)

    await recorded_sleeps(handle, 3)
    assert (await handle.get_status()).state is aiki.RunState.RUNNING, "short waits in place"
    await clock.advance(300)
    first = await waiting_until(handle, t0 + 10_000)
    assert first.wait is not None and first.wait.detail == "medium"
    assert calls.counts == {"short": 1}, "the short branch went on while the others slept"
    await clock.advance(9_700)
    second = await waiting_until(handle, t0 + 60_000)
    assert second.wait is not None and second.wait.detail == "long"
    assert calls.counts == {"short": 1, "medium": 1}
    await clock.advance(50_000)

    assert await handle.wait_for_completion(timeout=10) == ["short#1", "medium#1", "long#1"]
    assert sorted(sleep_records(await handle.get_history())) == [
        ("aiki.sleep/long", 0, 60_000),
        ("aiki.sleep/medium", 0, 10_000),
        ("aiki.sleep/short", 0, 300),
    ]
    assert calls.counts == {"short": 1, "medium": 1, "long": 1}


async def test_sleep_beside_a_running_task_lets_it_finish_first(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    release = asyncio.Event()
    calls = Calls()

    @aiki.task(name="slow")
    async def slow(ctx: aiki.TaskContext[Any]) -> str:
        calls("slow")
        await release.wait()
        return "slow done"

    @aiki.workflow(name="sleep-beside-task", version="1")
    async def beside(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        return list(
            await asyncio.gather(
                slow.run(workflow_run, payload={}),
                workflow_run.sleep("pause", timedelta(seconds=30)),
            )
        )

    await make_worker(beside)
    t0 = clock.now_ms()
    handle = await beside.enqueue(client)
    await recorded_sleeps(handle, 1)
    assert (await handle.get_status()).state is aiki.RunState.RUNNING, "waits for the task"
    release.set()
    await waiting_until(handle, t0 + 30_000)
    await clock.advance(30_000)
    assert await handle.wait_for_completion(timeout=10) == ["slow done", None]
    assert calls["slow"] == 1


async def test_sleep_that_ends_while_a_sibling_works_ends_in_place(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    """A long sleep frees the worker only once nothing else of the run is in flight."""
    release, calls = asyncio.Event(), Calls()
    step = step_task(calls)

    @aiki.task(name="slow")
    async def slow(ctx: aiki.TaskContext[Any]) -> str:
        await release.wait()
        return "slow done"

    @aiki.workflow(name="sleep-while-working", version="1")
    async def sleep_while_working(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        async def later() -> str:
            await workflow_run.sleep("pause", timedelta(seconds=5))
            return await step.run(workflow_run, payload={"name": "after"})

        return list(await asyncio.gather(slow.run(workflow_run, payload={}), later()))

    await make_worker(sleep_while_working)
    handle = await sleep_while_working.enqueue(client)
    await recorded_sleeps(handle, 1)
    await clock.advance(5_000)

    async def after_ran() -> bool:
        return calls["after"] == 1

    await eventually(after_ran)
    release.set()
    assert await handle.wait_for_completion(timeout=10) == ["slow done", "after#1"]
    kinds = [e.kind.value for e in await handle.get_history()]
    assert "run_waiting" not in kinds and kinds.count("run_claimed") == 1


async def test_long_retry_backoff_beside_a_working_sibling_retries_in_place(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    """Retry backoffs park like sleeps: due while a sibling still works, they retry in place."""
    release, calls = asyncio.Event(), Calls()

    @aiki.task(name="slow")
    async def slow(ctx: aiki.TaskContext[Any]) -> str:
        await release.wait()
        return "slow done"

    @aiki.task(name="flaky", retry=aiki.Retry.fixed(max_attempts=2, delay_ms=30_000))
    async def flaky(ctx: aiki.TaskContext[Any]) -> int:
        if calls("flaky") == 1:
            raise OSError("not yet")
        return 2

    @aiki.workflow(name="backoff-while-working", version="1")
    async def backoff_while_working(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        return list(
            await asyncio.gather(
                slow.run(workflow_run, payload={}), flaky.run(workflow_run, payload={})
            )
        )

    # The fake clock jumps 30 s at once, past the default 12 s lease with no heartbeat in
    # between: a longer lease keeps this test about the backoff, not about lease expiry.
    await make_worker(backoff_while_working, workflow_run=aiki.WorkflowRunConfig(lease_ms=60_000))
    handle = await backoff_while_working.enqueue(client)

    async def failed_once() -> bool:
        return any(e.kind.value == "task_failed" for e in await handle.get_history())

    await eventually(failed_once)
    await clock.advance(30_000)

    async def retried() -> bool:
        return calls["flaky"] == 2

    await eventually(retried)
    release.set()
    assert await handle.wait_for_completion(timeout=10) == ["slow done", 2]
    kinds = [e.kind.value for e in await handle.get_history()]
    assert "run_waiting" not in kinds and kinds.count("run_claimed") == 1


# --- crashes and replay ---------------------------------------------------------------------


async def test_crash_mid_sleep_keeps_the_recorded_wake_up_time(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    """The run is taken again 3 s into a 60 s sleep: it waits the remaining 57 s, not 60."""
    parked, calls = asyncio.Event(), Calls()

    @aiki.task(name="parks")
    async def parks(ctx: aiki.TaskContext[Any]) -> str:
        if calls("parks") == 1:
            parked.set()
            await asyncio.Event().wait()  # the crash happens here
        return "parked"

    @aiki.workflow(name="crash-mid-sleep", version="1")
    async def crash_mid_sleep(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        return list(
            await asyncio.gather(
                parks.run(workflow_run, payload={}),
                workflow_run.sleep("long", timedelta(seconds=60)),
            )
        )

    first = await make_worker(crash_mid_sleep, workflow_run=LEASE)
    t0 = clock.now_ms()
    handle = await crash_mid_sleep.enqueue(client)
    await parked.wait()
    await recorded_sleeps(handle, 1)
    await kill_worker(first)

    await make_worker(crash_mid_sleep, workflow_run=LEASE)
    await clock.advance(3_001)  # the first worker's lease expires
    status = await waiting_until(handle, t0 + 60_000)
    assert status.wait is not None and status.wait.detail == "long"
    assert calls["parks"] == 2
    await clock.advance(60_000 - 3_001)
    assert await handle.wait_for_completion(timeout=10) == ["parked", None]
    assert sleep_records(await handle.get_history()) == [("aiki.sleep/long", 0, 60_000)]


async def test_crash_mid_inline_sleep_does_not_start_it_over(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    @aiki.workflow(name="inline-crash", version="1")
    async def inline_crash(workflow_run: aiki.WorkflowRun[Any]) -> str:
        await workflow_run.sleep("short", timedelta(milliseconds=800))
        return "awake"

    first = await make_worker(inline_crash, workflow_run=LEASE)
    handle = await inline_crash.enqueue(client)
    await recorded_sleeps(handle, 1)
    await kill_worker(first)

    await make_worker(inline_crash, workflow_run=LEASE)
    await clock.advance(3_001)  # lease expiry; the sleep's 800 ms are long over
    # Started over, the sleep would wait 800 ms more on a clock that no longer moves.
    assert await handle.wait_for_completion(timeout=10) == "awake"
    assert len(sleep_records(await handle.get_history())) == 1


async def test_duration_computed_from_now_replays(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    """A sleep is addressed by name and occurrence: a duration computed from `now()` (here
    "until t0 + 60 s") differs on every replay, and the recorded wake-up time still holds."""
    t0 = clock.now_ms()

    @aiki.workflow(name="until-deadline", version="1")
    async def until_deadline(workflow_run: aiki.WorkflowRun[Any]) -> str:
        now_ms = int(workflow_run.now().timestamp() * 1000)
        await workflow_run.sleep("deadline", (t0 + 60_000 - now_ms) / 1000)
        return "on time"

    first = await make_worker(until_deadline, workflow_run=LEASE)
    handle = await until_deadline.enqueue(client)
    await waiting_until(handle, t0 + 60_000)
    await first.stop()
    await clock.advance(20_000)
    await make_worker(until_deadline, workflow_run=LEASE)
    await clock.advance(40_000)
    assert await handle.wait_for_completion(timeout=10) == "on time"
    assert sleep_records(await handle.get_history()) == [("aiki.sleep/deadline", 0, 60_000)]


async def test_changed_duration_on_replay_keeps_the_recorded_time(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    parked, calls = asyncio.Event(), Calls()
    duration = timedelta(seconds=60)

    @aiki.task(name="parks")
    async def parks(ctx: aiki.TaskContext[Any]) -> str:
        if calls("parks") == 1:
            parked.set()
            await asyncio.Event().wait()  # the crash happens here
        return "parked"

    @aiki.workflow(name="changed-duration", version="1")
    async def changed(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        return list(
            await asyncio.gather(
                parks.run(workflow_run, payload={}), workflow_run.sleep("nap", duration)
            )
        )

    first = await make_worker(changed, workflow_run=LEASE)
    t0 = clock.now_ms()
    handle = await changed.enqueue(client)
    await parked.wait()
    await recorded_sleeps(handle, 1)
    await kill_worker(first)

    duration = timedelta(seconds=10)  # the code changed; the recorded 60 s still hold
    await make_worker(changed, workflow_run=LEASE)
    await clock.advance(3_001)
    await waiting_until(handle, t0 + 60_000)
    await clock.advance(60_000 - 3_001)
    assert await handle.wait_for_completion(timeout=10) == ["parked", None]


async def test_new_sleep_before_recorded_calls_is_a_divergence(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls = Calls()
    step = step_task(calls)
    parked = asyncio.Event()
    inserted = False

    @aiki.workflow(name="inserted-sleep", version="1")
    async def inserted_sleep(workflow_run: aiki.WorkflowRun[Any]) -> str:
        if inserted:
            await workflow_run.sleep("inserted", 0)
        result = await step.run(workflow_run, payload={"name": "a"})
        if not inserted:
            parked.set()
            await asyncio.Event().wait()  # the crash happens here
        return result

    first = await make_worker(inserted_sleep, workflow_run=LEASE)
    handle = await inserted_sleep.enqueue(client)
    await parked.wait()
    await tasks_recorded(handle, 1)
    await kill_worker(first)
    inserted = True
    await make_worker(inserted_sleep, workflow_run=LEASE)
    await clock.advance(3_001)

    with pytest.raises(aiki.WorkflowRunFailedError) as failed:
        await handle.wait_for_completion(timeout=10)
    error = failed.value.error
    assert error.type == "aiki.errors.NondeterminismError"
    assert "new call to sleep 'inserted'" in error.message
    assert "task 'step'" in error.message
    assert sleep_records(await handle.get_history()) == [], "nothing recorded for it"


# --- cancellation ---------------------------------------------------------------------------


async def test_cancel_while_waiting_on_a_sleep(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    @aiki.workflow(name="long-sleep", version="1")
    async def long_sleep(workflow_run: aiki.WorkflowRun[Any]) -> None:
        await workflow_run.sleep("forever-ish", timedelta(days=365))

    await make_worker(long_sleep)
    handle = await long_sleep.enqueue(client)
    await state_is(handle, aiki.RunState.WAITING)

    assert (await handle.cancel("woke up early")).state is aiki.RunState.CANCELLED
    with pytest.raises(aiki.WorkflowRunCancelledError) as cancelled:
        await handle.wait_for_completion(timeout=10)
    assert cancelled.value.reason == "woke up early"


async def test_cancel_interrupts_a_sleep_in_place(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    seen: list[str] = []

    @aiki.workflow(name="short-sleep", version="1")
    async def short_sleep(workflow_run: aiki.WorkflowRun[Any]) -> None:
        try:
            await workflow_run.sleep("short", timedelta(milliseconds=900))
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    await make_worker(short_sleep)
    handle = await short_sleep.enqueue(client)
    await recorded_sleeps(handle, 1)
    assert (await handle.get_status()).state is aiki.RunState.RUNNING

    await handle.cancel("no time")
    with pytest.raises(aiki.WorkflowRunCancelledError):
        await handle.wait_for_completion(timeout=10)  # the clock never moved
    assert seen == ["cancelled"]


# --- bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "duration", "error", "message"),
    [
        ("", 1, ValueError, "sleep name must not be empty"),
        (7, 1, TypeError, "sleep name must be a str, got int"),
        ("nap", -1, ValueError, "sleep 'nap': duration must not be negative"),
        ("nap", timedelta(seconds=-1), ValueError, "duration must not be negative"),
        ("nap", float("nan"), ValueError, "duration must be finite"),
        ("nap", True, TypeError, "duration must be a timedelta or a number of seconds"),
        ("nap", "5", TypeError, "got str"),
    ],
)
async def test_bad_arguments_fail_the_run_before_anything_is_recorded(
    client: aiki.Client,
    make_worker: WorkerFactory,
    name: Any,
    duration: Any,
    error: type[Exception],
    message: str,
) -> None:
    @aiki.workflow(name="bad-sleep", version="1")
    async def bad_sleep(workflow_run: aiki.WorkflowRun[Any]) -> None:
        await workflow_run.sleep(name, duration)

    await make_worker(bad_sleep)
    handle = await bad_sleep.enqueue(client)
    with pytest.raises(aiki.WorkflowRunFailedError) as failed:
        await handle.wait_for_completion(timeout=10)
    assert failed.value.error.type == error.__name__
    assert "workflow 'bad-sleep': sleep" in failed.value.error.message
    assert message in failed.value.error.message
    kinds = [e.kind.value for e in await handle.get_history()]
    assert not any(kind.startswith("task_") for kind in kinds)


# --- what people see ------------------------------------------------------------------------


async def test_dashboard_shows_the_sleep_as_a_sleep(
    client: aiki.Client,
    make_worker: WorkerFactory,
    clock: FakeClock,
    browser: httpx.AsyncClient,
) -> None:
    await make_worker(morning_routine_v2)
    handle = await morning_routine_v2.enqueue(client, payload={"user_id": "1"})
    await waiting_until(handle, clock.now_ms() + 2_000)

    waiting = (await browser.get(f"/dashboard/runs/{handle.id}")).text
    assert "<h2>Sleeps</h2>" in waiting
    assert '<span class="mono">coffee</span>' in waiting and "sleeping</span>" in waiting
    assert 'sleep <span class="mono">coffee</span> until' in waiting  # "Waiting for"
    assert "sleep &#39;coffee&#39; until" in waiting  # the timeline's waiting entry
    assert "aiki.sleep/" not in waiting, "never shown as a task"

    await clock.advance(2_000)
    assert await handle.wait_for_completion(timeout=10) == {
        "alarm_result": "Wake up!",
        "stretch_result": 300,
    }
    done = (await browser.get(f"/dashboard/runs/{handle.id}")).text
    assert "&#39;coffee&#39; #1 for 2.0 s" in done  # the timeline's sleep entry
    assert "sleeping</span>" not in done and "aiki.sleep/" not in done
    assert done.count('<div class="task">') == 2  # ring-alarm and stretch only


async def test_runs_show_lists_the_sleeps(
    client: aiki.Client,
    make_worker: WorkerFactory,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    @aiki.workflow(name="two-naps", version="1")
    async def two_naps(workflow_run: aiki.WorkflowRun[Any]) -> None:
        for _ in range(2):
            await workflow_run.sleep("nap", timedelta(seconds=90))

    await make_worker(two_naps)
    handle = await two_naps.enqueue(client)
    for _ in range(2):
        await waiting_until(handle, clock.now_ms() + 90_000)
        await clock.advance(90_000)
    await handle.wait_for_completion(timeout=10)

    _describe_sleeps(await handle.get_history())
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "sleeps"
    assert [line.split()[:4] for line in lines[1:]] == [
        ["nap", "#1", "90000", "ms"],
        ["nap", "#2", "90000", "ms"],
    ]
    assert all("until about" in line for line in lines[1:])
