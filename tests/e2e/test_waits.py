"""Waiting for many runs costs little: a handle keeps its run's end, a server the recent ends."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

import aiki
from _httpx_transport import HttpxTransport
from aiki._core.ids import RunId
from aiki._core.models import NewRun, PollReply, PollRequest, RunsEnded, RunStatus
from aiki.client._http import HttpApi
from aiki.client._waits import SharedWaits
from aiki.examples import morning_routine
from aiki.server import _run_ends
from conftest import WorkerFactory
from helpers import StorageCalls, until


async def test_a_handle_keeps_the_end_of_its_run(
    client: aiki.Client, make_worker: WorkerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_worker(morning_routine)
    handle: aiki.RunHandle[Any] = await morning_routine.enqueue(client, payload={})
    first = await handle.wait_for_completion(timeout=10)

    asked: list[RunId] = []
    api_wait = client.api.wait

    async def counted(run_id: RunId, timeout_s: float | None) -> RunStatus:
        asked.append(run_id)
        return await api_wait(run_id, timeout_s)

    monkeypatch.setattr(client.api, "wait", counted)
    assert await handle.wait_for_completion(timeout=10) == first
    assert asked == []
    # Another handle on the same run has not seen its end yet: it asks once.
    again: aiki.RunHandle[Any] = client.get_handle(handle.id)
    assert await again.wait_for_completion(timeout=10) == first
    assert asked == [handle.id]


async def test_waiting_on_runs_that_ended_here_reads_nothing_from_storage(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    await make_worker(morning_routine)
    handles = [await morning_routine.enqueue(client, payload={"n": n}) for n in range(5)]
    for handle in handles:  # the runs end while nobody waits for them
        status = await handle.get_status()
        while not status.state.is_final:
            status = await srv.service.wait(handle.id, timeout_s=10)

    reads = StorageCalls(srv.storage, "get_run", "get_runs")
    fresh = [client.get_handle(h.id) for h in handles]
    results = [await h.wait_for_completion(timeout=10) for h in fresh]
    assert results == [{"alarm_result": "Wake up!", "stretch_result": 300}] * 5
    assert reads.total == 0


async def test_a_worker_asks_for_as_many_runs_as_it_has_free_slots(
    client: aiki.Client, make_worker: WorkerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []
    api_poll = client.api.poll

    async def counted(request: PollRequest) -> PollReply:
        asked.append(request.capacity)
        return await api_poll(request)

    monkeypatch.setattr(client.api, "poll", counted)
    await make_worker(morning_routine, max_concurrent_workflow_runs=40)
    await until(lambda: len(asked) == 1)
    assert asked[0] == 40  # not a fixed batch: the whole free capacity, in one claim
    limited = await make_worker(
        morning_routine,
        max_concurrent_workflow_runs=40,
        workflow_run_subscriber=aiki.SubscriberConfig(max_batch_size=7),
    )
    assert limited.subscriber_config.max_batch_size == 7
    await until(lambda: 7 in asked)
    assert set(asked) == {7, 40}


async def test_many_waits_of_one_http_client_share_one_long_poll(srv: aiki.Server) -> None:
    transport = HttpxTransport(httpx.ASGITransport(app=srv.app))
    async with await aiki.create_client(url="http://aiki.test", _transport=transport) as client:
        assert isinstance(client.api, HttpApi)
        asked: list[int] = []
        wait_any = client.api.wait_any

        async def counted(run_ids: Sequence[RunId], timeout_s: float) -> RunsEnded:
            asked.append(len(run_ids))
            return await wait_any(run_ids, timeout_s)

        client.api._waits = SharedWaits(counted, cap_s=25.0, max_runs=1_000)
        worker = await aiki.worker(client, id="w-shared", max_concurrent_workflow_runs=30)
        worker.registry.add(morning_routine)
        handles = [
            await morning_routine.enqueue(client, payload={"n": n}, allow_unknown=True)
            for n in range(30)
        ]
        reads = StorageCalls(srv.storage, "get_run", "get_runs")
        results = asyncio.gather(*(h.wait_for_completion(timeout=10) for h in handles))
        await until(lambda: len(asked) == 1 and srv.service.parked_waits == 30)
        assert asked == [30], "the 30 waits begun together went in one request"
        # Made here, their ends not heard of yet: nothing to read before the wait.
        assert reads.total == 0
        async with worker:
            assert await results == [{"alarm_result": "Wake up!", "stretch_result": 300}] * 30
        # Runs end one by one: each answer settles those ended and the rest wait again,
        # each request with one storage read at most.
        assert sum(asked) < 30 * 30
        assert reads.total <= len(asked)
        with pytest.raises(aiki.RunNotFoundError):
            await client.get_handle("no-such-run").wait_for_completion(timeout=1)


async def test_wait_any_answers_with_the_runs_ended_and_the_ids_no_run_has(
    srv: aiki.Server, client: aiki.Client, make_worker: WorkerFactory
) -> None:
    await make_worker(morning_routine)
    done = await morning_routine.enqueue(client, payload={})
    await done.wait_for_completion(timeout=10)
    never = await client.enqueue(
        NewRun(workflow="unserved", version="1", payload_json="{}", allow_unknown=True)
    )

    answer = await client.api.wait_any([never.id, done.id], 10)
    assert [s.id for s in answer.ended] == [done.id] and answer.missing == ()
    assert await client.api.wait_any([never.id, RunId("nope")], 10) == RunsEnded(
        missing=(RunId("nope"),)
    )
    assert await client.api.wait_any([never.id], 0) == RunsEnded()
    with pytest.raises(aiki.RunNotFoundError):
        await client.get_handle("nope").wait_for_completion(timeout=0)


async def test_a_wait_on_many_runs_answers_with_those_ending_together(
    srv: aiki.Server, client: aiki.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One end is not answered on its own when others follow at once (a batch's commit)."""
    monkeypatch.setattr(_run_ends, "_WAIT_ANY_GATHER_S", 0.5)  # longer than two cancels take
    handles = [
        await morning_routine.enqueue(client, payload={"n": n}, allow_unknown=True)
        for n in range(3)
    ]
    waiting = asyncio.ensure_future(srv.service.wait_any([h.id for h in handles], 30.0))
    await until(lambda: srv.service.parked_waits == 3)

    await handles[0].cancel("first")
    await handles[1].cancel("second")

    seen = await waiting
    assert sorted(status.id for status in seen.ended) == sorted([handles[0].id, handles[1].id])
    assert all(status.state is aiki.RunState.CANCELLED for status in seen.ended)
