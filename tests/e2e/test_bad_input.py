"""Bad payloads and results are refused with errors that say what and where; no run is stuck."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pydantic
import pytest

import aiki
from aiki._core.models import NewRun
from aiki.examples import morning_routine
from aiki.testing import FakeClock
from conftest import WorkerFactory


class Order(pydantic.BaseModel):
    order_id: int
    amount_cents: int


class Receipt(pydantic.BaseModel):
    order_id: int
    charged: int


@aiki.task(name="charge-card")
async def charge_card(ctx: aiki.TaskContext[Order]) -> Receipt:
    assert isinstance(ctx.payload, Order)
    return Receipt(order_id=ctx.payload.order_id, charged=ctx.payload.amount_cents)


@aiki.workflow(name="checkout", version="1.0.0")
async def checkout(workflow_run: aiki.WorkflowRun[Order]) -> Receipt:
    assert isinstance(workflow_run.payload, Order)
    receipt = await charge_card.run(workflow_run, payload=workflow_run.payload)
    assert isinstance(receipt, Receipt)
    return receipt


async def test_pydantic_payloads_and_results_round_trip(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    await make_worker(checkout)
    handle = await checkout.enqueue(client, payload=Order(order_id=42, amount_cents=4_200))

    receipt = await handle.wait_for_completion(timeout=10)

    assert receipt == Receipt(order_id=42, charged=4_200)
    assert (await handle.get_status()).payload == {"order_id": 42, "amount_cents": 4200}


async def test_non_json_payload_is_refused_before_anything_is_stored(
    client: aiki.Client,
) -> None:
    with pytest.raises(aiki.PayloadError) as refused:
        await checkout.enqueue(client, payload={"items": {1, 2}})  # type: ignore[arg-type]

    message = str(refused.value)
    assert "workflow 'checkout' payload" in message and "set" in message
    assert isinstance(refused.value, TypeError)
    assert await client.list_runs() == []


async def test_payload_not_matching_the_workflows_model_is_refused_before_sending(
    client: aiki.Client,
) -> None:
    """The SDK checks what the worker would decode: no run is created to fail later."""
    with pytest.raises(aiki.PayloadError) as refused:
        await checkout.enqueue(client, payload={"order_id": "forty-two"})  # type: ignore[arg-type]

    message = str(refused.value)
    assert message.startswith("workflow 'checkout' payload does not match Order: ")
    assert "order_id: Input should be a valid integer" in message
    assert "amount_cents: Field required" in message
    assert await client.list_runs() == []


async def test_oversized_payload_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    async with aiki.server(
        f"sqlite:///{tmp_path}/small.db", clock=clock, max_payload_bytes=1_000
    ) as small:
        client = await aiki.create_client(server=small)
        with pytest.raises(aiki.PayloadTooLargeError) as refused:
            await morning_routine.enqueue(client, payload={"blob": "x" * 2_000})
        assert "workflow 'morning-routine' payload" in str(refused.value)
        assert refused.value.limit == 1_000 and refused.value.size > 1_000
        assert await client.list_runs() == []


def test_default_payload_limit_is_one_mebibyte() -> None:
    assert aiki.ServerSettings().max_payload_bytes == 1024 * 1024


async def run_to_failure(
    client: aiki.Client, make_worker: WorkerFactory, wf: aiki.Workflow[Any, Any]
) -> aiki.ErrorInfo:
    await make_worker(wf)
    handle = await wf.enqueue(client)
    with pytest.raises(aiki.WorkflowRunFailedError) as failed:
        await handle.wait_for_completion(timeout=10)
    assert (await handle.get_status()).state is aiki.RunState.FAILED
    return failed.value.error


async def test_non_json_task_payload_fails_the_run_naming_the_task(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    ran = threading.Event()

    @aiki.task(name="needs-json")
    async def needs_json(ctx: aiki.TaskContext[Any]) -> None:
        ran.set()

    @aiki.workflow(name="sends-bytes", version="1")
    async def sends_bytes(workflow_run: aiki.WorkflowRun[Any]) -> None:
        await needs_json.run(workflow_run, payload={"raw": b"\x00"})

    error = await run_to_failure(client, make_worker, sends_bytes)
    assert error.type == "aiki.errors.PayloadError"
    assert "task 'needs-json' payload" in error.message and "bytes" in error.message
    assert not ran.is_set()


async def test_non_json_task_result_fails_the_task(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.task(name="returns-object", retry=aiki.Retry.fixed(max_attempts=3, delay_ms=0))
    async def returns_object(ctx: aiki.TaskContext[Any]) -> Any:
        return object()

    @aiki.workflow(name="bad-task-result", version="1")
    async def bad_task_result(workflow_run: aiki.WorkflowRun[Any]) -> None:
        await returns_object.run(workflow_run, payload={})

    error = await run_to_failure(client, make_worker, bad_task_result)
    assert error.type == "aiki.errors.TaskFailedError"
    assert "task 'returns-object' result" in error.message and "object" in error.message
    assert "after 1 attempt" in error.message, "a result that cannot be stored is not retried"


async def test_non_json_workflow_result_fails_the_run(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    @aiki.workflow(name="returns-set", version="1")
    async def returns_set(workflow_run: aiki.WorkflowRun[Any]) -> Any:
        return {1, 2, 3}

    error = await run_to_failure(client, make_worker, returns_set)
    assert "workflow 'returns-set' result" in error.message and "set" in error.message


async def test_oversized_results_fail_cleanly(tmp_path: Path, clock: FakeClock) -> None:
    @aiki.task(name="big")
    async def big(ctx: aiki.TaskContext[Any]) -> str:
        return "x" * 5_000

    @aiki.workflow(name="big-task-result", version="1")
    async def big_task_result(workflow_run: aiki.WorkflowRun[Any]) -> None:
        await big.run(workflow_run, payload={})

    @aiki.workflow(name="big-result", version="1")
    async def big_result(workflow_run: aiki.WorkflowRun[Any]) -> str:
        return "y" * 5_000

    async with aiki.server(
        f"sqlite:///{tmp_path}/small.db", clock=clock, max_payload_bytes=1_000
    ) as small:
        client = await aiki.create_client(server=small)
        w = await aiki.worker(client, clock=clock)
        w.registry.add(big_task_result).add(big_result)
        async with w:
            task_run = await big_task_result.enqueue(client)
            run = await big_result.enqueue(client)
            with pytest.raises(aiki.WorkflowRunFailedError) as task_failed:
                await task_run.wait_for_completion(timeout=10)
            with pytest.raises(aiki.WorkflowRunFailedError) as run_failed:
                await run.wait_for_completion(timeout=10)
    assert "task 'big' result" in task_failed.value.error.message
    assert "over the limit of 1000 bytes" in task_failed.value.error.message
    assert "over the limit of 1000 bytes" in run_failed.value.error.message


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("the lock is held")
        self.lock = threading.Lock()

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no string for you")


@pytest.mark.parametrize(
    ("exc", "message"),
    [(Unpicklable(), "the lock is held"), (Unprintable(), "<unprintable Unprintable>")],
)
async def test_any_exception_fails_the_run_with_its_message(
    client: aiki.Client, make_worker: WorkerFactory, exc: Exception, message: str
) -> None:
    @aiki.workflow(name="raises", version="1")
    async def raises(workflow_run: aiki.WorkflowRun[Any]) -> None:
        raise exc

    error = await run_to_failure(client, make_worker, raises)
    assert error.message == message
    assert error.type.endswith(type(exc).__qualname__)


async def test_payload_enqueued_by_name_is_checked_against_the_schema_its_worker_registered(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    """By name (CLI, HTTP) there is no pydantic model at hand: the registered schema decides."""
    await make_worker(checkout)
    by_name = NewRun(
        workflow="checkout", version="1.0.0", payload_json='{"order_id":"not a number"}'
    )
    with pytest.raises(aiki.PayloadError) as refused:
        await client.enqueue(by_name)
    assert str(refused.value) == (
        "workflow 'checkout' payload does not match the schema its worker registered: "
        "$.order_id: 'not a number' is not of type 'integer'; "
        "$: 'amount_cents' is a required property"
    )
    assert await client.list_runs(workflow="checkout") == []  # nothing was stored

    fits = NewRun(
        workflow="checkout", version="1.0.0", payload_json='{"order_id":7,"amount_cents":70}'
    )
    handle = await client.enqueue(fits)
    assert await handle.wait_for_completion(timeout=10) == {"order_id": 7, "charged": 70}


async def test_a_version_no_worker_registered_is_refused_unless_allowed(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    with pytest.raises(aiki.WorkflowNotFoundError) as refused:
        await checkout.enqueue(client, payload=Order(order_id=1, amount_cents=1))
    assert refused.value.known == ()
    assert await client.list_runs() == []

    # Allowed, it waits for a worker; with none serving it, its status says so.
    early = await checkout.enqueue(
        client, payload=Order(order_id=1, amount_cents=1), allow_unknown=True
    )
    status = await early.get_status()
    assert status.state is aiki.RunState.PENDING
    assert status.note is not None and "checkout@1.0.0" in status.note
    # Enqueued but not registered, the version is still unknown to the next enqueue.
    with pytest.raises(aiki.WorkflowNotFoundError):
        await checkout.enqueue(client, payload=Order(order_id=2, amount_cents=2))

    await make_worker(checkout)
    receipt = await early.wait_for_completion(timeout=10)
    assert receipt == Receipt(order_id=1, charged=1)
    later = await checkout.enqueue(client, payload=Order(order_id=2, amount_cents=2))
    assert await later.wait_for_completion(timeout=10) == Receipt(order_id=2, charged=2)
