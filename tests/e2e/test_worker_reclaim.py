"""A run claimed again while its last execution on this worker is still winding down."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import pytest

import aiki
from aiki._core.ids import WorkerId
from aiki._core.models import ClaimedRun, Lease, NewRun, PollRequest, WorkflowKey
from aiki._core.serde import DEFAULT_MAX_PAYLOAD_BYTES
from aiki.examples import morning_routine

# `aiki.worker` is also the factory function, so the module is looked up by its full name.
worker_module = importlib.import_module("aiki.worker._worker")
KEY = WorkflowKey(name=morning_routine.name, version=morning_routine.version)


class HeldExecution:
    """Stands in for `RunExecution`: runs until the test lets it end."""

    def __init__(self, *, claimed: ClaimedRun, **_: Any) -> None:
        self.run_id = claimed.run.id
        self.lease = Lease(run_id=claimed.run.id, revision=claimed.revision)
        self.end = asyncio.Event()
        self.ended = asyncio.Event()

    async def execute(self) -> None:
        await self.end.wait()
        self.ended.set()


async def test_the_new_execution_stays_tracked_when_the_old_one_ends(
    srv: aiki.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    executions: list[HeldExecution] = []

    def held(**options: Any) -> HeldExecution:
        executions.append(HeldExecution(**options))
        return executions[-1]

    monkeypatch.setattr(worker_module, "RunExecution", held)
    client = await aiki.create_client(server=srv)
    worker = await aiki.worker(client, id="w-reclaim")
    worker.registry.add(morning_routine)
    await srv.service.enqueue(
        NewRun(workflow=KEY.name, version=KEY.version, payload_json="{}", allow_unknown=True)
    )
    poll = PollRequest(
        worker_id=WorkerId("w-reclaim"),
        workflows=(KEY,),
        capacity=1,
        lease_ms=30_000,
        wait_ms=0,
        recheck_ms=100,
    )
    (claimed,) = (await srv.service.poll(poll)).claimed

    worker._launch(
        claimed, DEFAULT_MAX_PAYLOAD_BYTES
    )  # the first execution: it suspends, and winds down...
    await asyncio.sleep(0)
    worker._launch(
        claimed, DEFAULT_MAX_PAYLOAD_BYTES
    )  # ...while the woken run is claimed here again
    old, new = executions
    old.end.set()
    await old.ended.wait()
    await asyncio.sleep(0)  # the old execution's task has finished

    assert worker.active_runs == 1, "the new execution is still held (and heartbeated)"
    new.end.set()
    await new.ended.wait()
    await asyncio.sleep(0)
    assert worker.active_runs == 0
