"""Durable events: `RunHandle.send_event` and `workflow_run.wait_for_event`.

An event sent before the run waits is kept; one sent while it waits wakes it; what a wait
received (or its timeout) is recorded, so a replay never receives another event in its place.
Time only moves when a test advances the fake clock.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pydantic
import pytest

import aiki
from aiki.testing import FakeClock, kill_worker
from conftest import WorkerFactory
from helpers import Calls, eventually, state_is

LEASE = aiki.WorkflowRunConfig(heartbeat_interval_ms=1_000, lease_ms=3_000)


class Approval(pydantic.BaseModel):
    by: str
    amount_cents: int


def event_records(history: list[aiki.HistoryEvent]) -> list[tuple[str, str, int]]:
    """(task, digest, index) of every `wait_for_event` record in `history`."""
    return [
        (e.data["task"], e.data["digest"], e.data["index"])
        for e in history
        if e.kind.value == "task_completed" and e.data["task"].startswith("aiki.event/")
    ]


async def waiting_for_event(handle: aiki.RunHandle[Any], name: str) -> aiki.RunStatus:
    async def check() -> bool:
        status = await handle.get_status()
        return (
            status.state is aiki.RunState.WAITING
            and status.wait is not None
            and status.wait.kind.value == "event"
            and status.wait.detail == name
        )

    await eventually(check)
    return await handle.get_status()


@aiki.workflow(name="await-approval", version="1")
async def await_approval(workflow_run: aiki.WorkflowRun[Any]) -> Any:
    return await workflow_run.wait_for_event("approved")


# --- receiving -------------------------------------------------------------------------------


async def test_an_event_sent_before_the_wait_is_kept_for_it(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    handle = await await_approval.enqueue(client, allow_unknown=True)
    sent = await handle.send_event("approved", {"by": "ana"})
    assert sent.created and sent.seq > 0

    await make_worker(await_approval)
    assert await handle.wait_for_completion(timeout=10) == {"by": "ana"}
    history = await handle.get_history()
    assert "run_waiting" not in [e.kind.value for e in history]
    assert event_records(history) == [("aiki.event/approved", "received", 0)]


async def test_an_event_wakes_the_waiting_run_which_freed_its_worker(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.workflow(name="quick", version="1")
    async def quick(workflow_run: aiki.WorkflowRun[Any]) -> int:
        return 7

    await make_worker(await_approval, quick, max_concurrent_workflow_runs=1)
    handle = await await_approval.enqueue(client)
    status = await waiting_for_event(handle, "approved")
    assert status.wait is not None and status.wait.until_ms is None
    assert status.worker_id is None
    other = await quick.enqueue(client)
    assert await other.wait_for_completion(timeout=10) == 7, "the only slot is free"

    await handle.send_event("approved", Approval(by="ana", amount_cents=100))

    assert await handle.wait_for_completion(timeout=10) == {"by": "ana", "amount_cents": 100}
    kinds = [e.kind.value for e in await handle.get_history()]
    assert kinds.count("run_woken") == 1 and kinds.count("run_claimed") == 2
    assert "event_sent" in kinds


async def test_events_of_one_name_are_received_in_send_order(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.workflow(name="collect", version="1")
    async def collect(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        first = await workflow_run.wait_for_event("item")
        other = await workflow_run.wait_for_event("other")
        rest = [await workflow_run.wait_for_event("item") for _ in range(2)]
        return [first, other, *rest]

    handle = await collect.enqueue(client, allow_unknown=True)
    for n in (1, 2):
        await handle.send_event("item", n)
    await handle.send_event("other", "x")
    await make_worker(collect)
    await waiting_for_event(handle, "item")
    await handle.send_event("item", 3)

    assert await handle.wait_for_completion(timeout=10) == [1, "x", 2, 3]
    records = event_records(await handle.get_history())
    assert [(task, index) for task, _, index in records] == [
        ("aiki.event/item", 0),
        ("aiki.event/other", 0),
        ("aiki.event/item", 1),
        ("aiki.event/item", 2),
    ]


# --- timeouts --------------------------------------------------------------------------------


async def test_a_wait_times_out_durably(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    calls = Calls()

    @aiki.task(name="after")
    async def after(ctx: aiki.TaskContext[Any]) -> int:
        return calls("after")

    @aiki.workflow(name="impatient", version="1")
    async def impatient(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        try:
            got: Any = await workflow_run.wait_for_event("approved", timeout=timedelta(minutes=1))
        except TimeoutError as exc:
            got = f"timeout: {exc}"
        # A second run of the code (a replay) must see the same outcome.
        await workflow_run.sleep("pause", timedelta(minutes=5))
        return [got, await after.run(workflow_run, payload={})]

    await make_worker(impatient)
    t0 = clock.now_ms()
    handle = await impatient.enqueue(client)
    status = await waiting_for_event(handle, "approved")
    assert status.wait is not None and status.wait.until_ms == t0 + 60_000

    await clock.advance(60_000)

    async def sleeping() -> bool:
        status = await handle.get_status()
        return status.wait is not None and status.wait.kind.value == "sleep"

    await eventually(sleeping)
    # Too late: the wait has timed out, and a replay must not receive this.
    await handle.send_event("approved", "late")
    await clock.advance(300_000)
    result = await handle.wait_for_completion(timeout=10)
    assert result[0].startswith("timeout: no event 'approved' came by ")
    assert result[1] == 1
    records = event_records(await handle.get_history())
    assert records == [
        ("aiki.event/approved", "deadline", 0),
        ("aiki.event/approved", "timeout", 0),
    ]


async def test_an_event_within_the_timeout_is_received(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    @aiki.workflow(name="in-time", version="1")
    async def in_time(workflow_run: aiki.WorkflowRun[Any]) -> Any:
        return await workflow_run.wait_for_event("approved", timeout=60)

    await make_worker(in_time)
    handle = await in_time.enqueue(client)
    await waiting_for_event(handle, "approved")
    await clock.advance(30_000)
    await handle.send_event("approved", True)
    assert await handle.wait_for_completion(timeout=10) is True


async def test_a_zero_timeout_without_an_event_times_out_at_once(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.workflow(name="no-wait", version="1")
    async def no_wait(workflow_run: aiki.WorkflowRun[Any]) -> str:
        try:
            await workflow_run.wait_for_event("approved", timeout=0)
        except TimeoutError:
            return "none"
        return "got one"

    await make_worker(no_wait)
    handle = await no_wait.enqueue(client)
    assert await handle.wait_for_completion(timeout=10) == "none"


# --- sending ---------------------------------------------------------------------------------


async def test_a_send_with_a_known_key_is_stored_once(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.workflow(name="two-events", version="1")
    async def two_events(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        return [await workflow_run.wait_for_event("e") for _ in range(2)]

    handle = await two_events.enqueue(client, allow_unknown=True)
    first = await handle.send_event("e", 1, idempotency_key="k")
    again = await handle.send_event("e", 1, idempotency_key="k")
    assert first.created and not again.created and again.seq == first.seq
    with pytest.raises(aiki.EventRejectedError, match="different data") as caught:
        await handle.send_event("e", 2, idempotency_key="k")
    assert caught.value.idempotency_key == "k" and caught.value.run_id == handle.id

    await handle.send_event("e", 3, idempotency_key="k2")
    await make_worker(two_events)
    assert await handle.wait_for_completion(timeout=10) == [1, 3]


async def test_a_send_to_a_final_run_is_refused(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.workflow(name="done", version="1")
    async def done(workflow_run: aiki.WorkflowRun[Any]) -> int:
        return 1

    await make_worker(done)
    handle = await done.enqueue(client)
    await handle.wait_for_completion(timeout=10)
    with pytest.raises(aiki.EventRejectedError, match="completed") as caught:
        await handle.send_event("approved", 1)
    assert caught.value.run_id == handle.id and caught.value.name == "approved"


async def test_a_send_to_an_unknown_run_is_refused(client: aiki.Client) -> None:
    with pytest.raises(aiki.RunNotFoundError):
        await client.get_handle("no-such-run").send_event("approved", 1)


async def test_bad_names_and_data_are_refused_before_anything_is_stored(
    client: aiki.Client,
) -> None:
    handle = await await_approval.enqueue(client, allow_unknown=True)
    with pytest.raises(ValueError, match="empty"):
        await handle.send_event("", 1)
    with pytest.raises(TypeError, match="str"):
        await handle.send_event(7, 1)  # type: ignore[arg-type]  # a misuse, on purpose
    with pytest.raises(aiki.PayloadError, match="event 'approved'"):
        await handle.send_event("approved", object())
    with pytest.raises(aiki.PayloadError):
        await handle.send_event("approved", float("nan"))
    assert "event_sent" not in [e.kind.value for e in await handle.get_history()]


async def test_data_over_the_size_limit_is_refused(client: aiki.Client) -> None:
    handle = await await_approval.enqueue(client, allow_unknown=True)
    with pytest.raises(aiki.PayloadTooLargeError):
        await handle.send_event("approved", "x" * 2_000_000)


# --- crashes, cancellation -------------------------------------------------------------------


async def test_a_replay_after_a_crash_receives_the_same_event(
    client: aiki.Client, make_worker: WorkerFactory, clock: FakeClock
) -> None:
    blocked, calls = asyncio.Event(), Calls()

    @aiki.task(name="blocks")
    async def blocks(ctx: aiki.TaskContext[Any]) -> str:
        if calls("blocks") == 1:
            blocked.set()
            await asyncio.Event().wait()  # the crash happens here
        return "done"

    @aiki.workflow(name="crash-after-event", version="1")
    async def crash_after_event(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        got = await workflow_run.wait_for_event("e")
        return [got, await blocks.run(workflow_run, payload={})]

    handle = await crash_after_event.enqueue(client, allow_unknown=True)
    await handle.send_event("e", "first")
    first = await make_worker(crash_after_event, workflow_run=LEASE)
    await blocked.wait()
    await kill_worker(first)
    await handle.send_event("e", "second")  # must not be received in the first's place

    await make_worker(crash_after_event, workflow_run=LEASE)
    await clock.advance(3_001)  # the first worker's lease expires
    assert await handle.wait_for_completion(timeout=10) == ["first", "done"]
    assert event_records(await handle.get_history()) == [("aiki.event/e", "received", 0)]


async def test_cancel_while_waiting_for_an_event(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    await make_worker(await_approval)
    handle = await await_approval.enqueue(client)
    await waiting_for_event(handle, "approved")

    await handle.cancel("no longer needed")

    with pytest.raises(aiki.WorkflowRunCancelledError):
        await handle.wait_for_completion(timeout=10)
    with pytest.raises(aiki.EventRejectedError):
        await handle.send_event("approved", 1)


async def test_waits_for_two_names_at_once(client: aiki.Client, make_worker: WorkerFactory) -> None:
    @aiki.workflow(name="both", version="1")
    async def both(workflow_run: aiki.WorkflowRun[Any]) -> list[Any]:
        return list(
            await asyncio.gather(workflow_run.wait_for_event("a"), workflow_run.wait_for_event("b"))
        )

    await make_worker(both)
    handle = await both.enqueue(client)
    await state_is(handle, aiki.RunState.WAITING)
    await handle.send_event("b", 2)
    await handle.send_event("a", 1)
    assert await handle.wait_for_completion(timeout=10) == [1, 2]
