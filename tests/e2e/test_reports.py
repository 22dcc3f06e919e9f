"""Batched worker reports: many leased writes in one request, each with its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import aiki
from _httpx_transport import HttpxTransport
from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    Lease,
    NewRun,
    PollRequest,
    RunOutcome,
    TaskAddress,
    TaskEnd,
    TaskOutcome,
    TaskStart,
    WorkflowKey,
)
from aiki._core.states import RunState
from aiki._http.bodies import Report, ReportAnswer, ReportsBody, ReportsReply
from aiki._http.codec import Codec, encode
from aiki.client._http import HttpApi
from aiki.client._reports import ReportBatcher
from aiki.errors import LeaseLostError
from aiki.testing import FakeClock
from helpers import eventually

BASE = "http://aiki.test"
WORKER = WorkerId("w-batch")
KEY = WorkflowKey(name="batched", version="1")
ADDRESS = TaskAddress(task="t", digest="d" * 64, index=0)
REPLY = Codec(ReportsReply)
BODY = Codec(ReportsBody)


@pytest.fixture
async def raw(srv: aiki.Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=srv.app), base_url=BASE) as c:
        yield c


async def claimed_leases(srv: aiki.Server, n: int) -> list[Lease]:
    for i in range(n):
        await srv.service.enqueue(
            NewRun(workflow=KEY.name, version=KEY.version, payload_json=str(i), allow_unknown=True)
        )
    poll = PollRequest(
        worker_id=WORKER, workflows=(KEY,), capacity=n, lease_ms=30_000, wait_ms=0, recheck_ms=100
    )
    claimed = (await srv.service.poll(poll)).claimed
    assert len(claimed) == n
    return [Lease(run_id=c.run.id, revision=c.revision) for c in claimed]


def task_end(result: str = "1") -> TaskEnd:
    return TaskEnd(
        address=ADDRESS,
        attempt=1,
        worker_id=WORKER,
        outcome=TaskOutcome.COMPLETED,
        duration_ms=1,
        result_json=result,
    )


async def post(raw: httpx.AsyncClient, *reports: Report) -> httpx.Response:
    return await raw.post(
        "/v1/workers/reports",
        content=encode(ReportsBody(reports=reports)),
        headers={"content-type": "application/json"},
    )


async def kinds(srv: aiki.Server, run_id: RunId) -> list[str]:
    return [e.kind.value for e in await srv.service.get_history(run_id)]


async def test_a_lost_lease_fails_its_report_and_not_the_others(
    srv: aiki.Server, raw: httpx.AsyncClient
) -> None:
    good, stale = await claimed_leases(srv, 2)
    response = await post(
        raw,
        Report(run_id=good.run_id, revision=good.revision, finish_task=task_end()),
        Report(run_id=stale.run_id, revision=stale.revision + 7, finish_task=task_end()),
        Report(
            run_id=good.run_id,
            revision=good.revision,
            finish=RunOutcome(state=aiki.RunState.COMPLETED, result_json="2"),
        ),
    )

    assert response.status_code == 200
    first, lost, finished = REPLY.decode(response.content).answers
    assert first == ReportAnswer() and finished == ReportAnswer()
    assert lost.error is not None and lost.error.code == "lease_lost"
    assert (lost.error.run_id, lost.error.revision) == (stale.run_id, stale.revision + 7)
    # One run's writes applied in the order sent; the other run is as it was.
    assert (await srv.service.get_status(good.run_id)).state is aiki.RunState.COMPLETED
    assert (await kinds(srv, good.run_id))[-2:] == ["task_completed", "run_completed"]
    assert (await srv.service.get_status(stale.run_id)).state is aiki.RunState.RUNNING
    assert await kinds(srv, stale.run_id) == ["run_enqueued", "run_claimed"]


async def test_a_report_holds_exactly_one_write(srv: aiki.Server, raw: httpx.AsyncClient) -> None:
    (lease,) = await claimed_leases(srv, 1)
    two = Report(run_id=lease.run_id, revision=lease.revision, finish_task=task_end(), release=True)
    none = Report(run_id=lease.run_id, revision=lease.revision)
    for report, held in ((two, 2), (none, 0)):
        response = await post(raw, Report(run_id=lease.run_id, revision=0, release=True), report)
        assert response.status_code == 422
        body = response.json()
        assert body["field"] == "reports[1]"
        assert f"(it holds {held})" in body["message"]
    assert await kinds(srv, lease.run_id) == ["run_enqueued", "run_claimed"]  # nothing applied
    empty = await raw.post("/v1/workers/reports", json={"reports": []})
    assert empty.status_code == 422 and empty.json()["field"] == "reports"


async def test_the_http_client_sends_writes_made_together_in_one_request(
    srv: aiki.Server,
) -> None:
    api = HttpApi(
        BASE, transport=HttpxTransport(httpx.ASGITransport(app=srv.app)), retry_timeout=1.0
    )
    batches: list[int] = []
    send_reports = api._send_reports  # the request itself, its reports counted

    async def counted(reports: tuple[Report, ...]) -> tuple[ReportAnswer, ...]:
        batches.append(len(reports))
        return await send_reports(reports)

    api._reports = ReportBatcher(counted)
    try:
        leases = await claimed_leases(srv, 20)
        starts = [
            api.start_task(lease, TaskStart(address=ADDRESS, attempt=1, worker_id=WORKER))
            for lease in leases
        ]
        await asyncio.gather(*starts)
        assert batches == [20]

        await api.finish_task(leases[0], task_end())  # alone: sent at once, a batch of one
        assert batches == [20, 1]

        with pytest.raises(LeaseLostError):
            stale = Lease(run_id=leases[1].run_id, revision=leases[1].revision + 1)
            await api.finish_task(stale, task_end())
        assert await api.finish_task(leases[1], task_end()) is False
    finally:
        await api.aclose()


async def test_reports_made_while_a_batch_is_in_flight_go_together_in_the_next() -> None:
    sent: list[tuple[Report, ...]] = []
    first_arrived, answer_first = asyncio.Event(), asyncio.Event()

    async def send(reports: tuple[Report, ...]) -> tuple[ReportAnswer, ...]:
        sent.append(reports)
        if len(sent) == 1:
            first_arrived.set()
            await answer_first.wait()
        return tuple(ReportAnswer(cancel_requested=r.revision == 3) for r in reports)

    batcher = ReportBatcher(send)
    report = [Report(run_id=f"r{i}", revision=i, release=True) for i in range(5)]
    first = asyncio.ensure_future(batcher.submit(report[0]))
    await first_arrived.wait()
    rest = [asyncio.ensure_future(batcher.submit(r)) for r in report[1:]]
    answer_first.set()

    answers = await asyncio.gather(first, *rest)
    assert sent == [(report[0],), tuple(report[1:])]
    assert [a.cancel_requested for a in answers] == [False, False, False, True, False]
    await batcher.aclose()


async def test_a_failed_request_fails_every_report_in_it_and_later_ones_still_go() -> None:
    calls = 0

    async def send(reports: tuple[Report, ...]) -> tuple[ReportAnswer, ...]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise aiki.ServerUnavailableError("gone")
        return tuple(ReportAnswer() for _ in reports)

    batcher = ReportBatcher(send)
    one = Report(run_id="r", revision=1, release=True)
    results = await asyncio.gather(batcher.submit(one), batcher.submit(one), return_exceptions=True)
    assert [type(r) for r in results] == [aiki.ServerUnavailableError] * 2
    assert await batcher.submit(one) == ReportAnswer()
    await batcher.aclose()


def _finish_with(result_json: str) -> Report:
    return Report(
        run_id="r", revision=1, finish=RunOutcome(state=RunState.COMPLETED, result_json=result_json)
    )


async def test_a_batch_holds_about_one_payload_of_results_and_one_report_at_least() -> None:
    sent: list[int] = []
    first_arrived, answer_first = asyncio.Event(), asyncio.Event()

    async def send(reports: tuple[Report, ...]) -> tuple[ReportAnswer, ...]:
        sent.append(len(reports))
        if len(sent) == 1:
            first_arrived.set()
            await answer_first.wait()
        return tuple(ReportAnswer() for _ in reports)

    batcher = ReportBatcher(send, max_bytes=1_000)
    first = asyncio.ensure_future(batcher.submit(_finish_with('"first"')))
    await first_arrived.wait()
    # While the first is out: 400, 400, 400, then one larger than the limit by itself.
    sizes = [400, 400, 400, 1_500]
    rest = [asyncio.ensure_future(batcher.submit(_finish_with("1" * n))) for n in sizes]
    answer_first.set()
    await asyncio.gather(first, *rest)
    assert sent == [1, 2, 1, 1]
    await batcher.aclose()


async def test_many_large_results_at_once_reach_a_server_with_a_small_limit(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Each request of reports stays within the server's body limit: none is refused."""
    gate = asyncio.Event()

    @aiki.task(name="wordy")
    async def wordy(ctx: aiki.TaskContext[int]) -> str:
        await gate.wait()
        return str(ctx.payload % 10) * 400

    @aiki.workflow(name="wordy-run", version="1")
    async def wordy_run(workflow_run: aiki.WorkflowRun[int]) -> str:
        return await wordy.run(workflow_run, payload=workflow_run.payload)

    runs = 150  # their ends at once: ~150 x 800 bytes, more than one body may hold (~70 KB)
    async with aiki.server(
        f"sqlite:///{tmp_path}/small.db", clock=clock, max_payload_bytes=1_000
    ) as small:
        transport = HttpxTransport(httpx.ASGITransport(app=small.app))
        async with await aiki.create_client(url=BASE, _transport=transport) as client:
            worker = await aiki.worker(
                client,
                clock=clock,
                max_concurrent_workflow_runs=runs,
                graceful_shutdown_timeout_ms=0,
            )
            worker.registry.add(wordy_run)
            async with worker:
                handles = [
                    await wordy_run.enqueue(client, payload=i, allow_unknown=True)
                    for i in range(runs)
                ]

                async def all_running() -> bool:
                    page = await client.list_runs(state=aiki.RunState.RUNNING, limit=1000)
                    return len(page) == runs

                await eventually(all_running)
                gate.set()
                results = await asyncio.gather(
                    *(h.wait_for_completion(timeout=30) for h in handles)
                )
    assert results == [str(i % 10) * 400 for i in range(runs)]
