"""Static types of the public API, checked by mypy (strict, warn_unused_ignores).

`assert_type` pins what mypy infers; each `# type: ignore[code]` marks a misuse that must stay
an error: if it ever type-checks, the ignore becomes unused and mypy fails. Under pytest only the
definitions run (at import) and the one test below; the async functions are never called.
"""

from typing import Any, assert_type

import pydantic

import aiki


class Order(pydantic.BaseModel):
    order_id: int
    amount_cents: int


class Receipt(pydantic.BaseModel):
    order_id: int
    charged_cents: int


ORDER = Order(order_id=42, amount_cents=4_200)


@aiki.task(name="charge-card", retry=aiki.Retry.exponential(max_attempts=5, base_delay_ms=200))
async def charge(ctx: aiki.TaskContext[Order]) -> Receipt:
    assert_type(ctx.payload, Order)
    assert_type(ctx.attempt, int)
    assert_type(ctx.workflow_run, aiki.WorkflowRun[Any])
    return Receipt(order_id=ctx.payload.order_id, charged_cents=ctx.payload.amount_cents)


@aiki.task(name="count-items")
def count_items(ctx: aiki.TaskContext[list[str]]) -> int:
    return len(ctx.payload)


async def _refund(ctx: aiki.TaskContext[Receipt]) -> None:
    return None


refund = aiki.task(name="refund", run=_refund)


@aiki.workflow(name="checkout", version="1.0.0")
async def checkout(workflow_run: aiki.WorkflowRun[Order]) -> Receipt:
    assert_type(workflow_run.payload, Order)
    assert_type(workflow_run.params, aiki.Params[Order])
    receipt = await charge.run(workflow_run, payload=workflow_run.payload)
    assert_type(receipt, Receipt)
    return receipt


async def _ship(workflow_run: aiki.WorkflowRun[Receipt]) -> bool:
    return True


ship = aiki.workflow(name="ship", version="1", run=_ship)


# --- what definitions are ---------------------------------------------------------------------

assert_type(charge, aiki.Task[Order, Receipt])
assert_type(count_items, aiki.Task[list[str], int])
assert_type(refund, aiki.Task[Receipt, None])
assert_type(checkout, aiki.Workflow[Order, Receipt])
assert_type(ship, aiki.Workflow[Receipt, bool])


async def _typed_calls(client: aiki.Client, workflow_run: aiki.WorkflowRun[Order]) -> None:
    handle = await checkout.enqueue(client, payload=ORDER)
    assert_type(handle, aiki.RunHandle[Receipt])
    assert_type(await handle.wait_for_completion(), Receipt)
    assert_type(await handle.wait_for_completion(timeout=60), Receipt)
    assert_type(await handle.get_status(), aiki.RunStatus)
    assert_type(await handle.get_history(), list[aiki.HistoryEvent])
    assert_type(await handle.cancel("no longer needed"), aiki.RunStatus)
    assert_type(await handle.send_event("approved", ORDER, idempotency_key="k"), aiki.EventSent)
    assert_type(await workflow_run.wait_for_event("approved", timeout=60), Any)

    keyed = await checkout.enqueue(client, payload=ORDER, idempotency_key="order-42")
    assert_type(keyed, aiki.RunHandle[Receipt])

    assert_type(client.get_handle("run-id"), aiki.RunHandle[Any])
    assert_type(await count_items.run(workflow_run, payload=["a", "b"]), int)
    assert_type(await refund.run(workflow_run, payload=Receipt(order_id=1, charged_cents=1)), None)

    registry = aiki.Registry().add(checkout).add(ship)
    assert_type(registry, aiki.Registry)


# --- misuses that must stay type errors -------------------------------------------------------


async def _misuses(client: aiki.Client, workflow_run: aiki.WorkflowRun[Order]) -> None:
    await checkout.enqueue(client, payload=Receipt(order_id=1, charged_cents=1))  # type: ignore[arg-type]
    await checkout.enqueue(client, payload={"order_id": 1})  # type: ignore[arg-type]
    await checkout.enqueue(client, payload=ORDER, idempotency_key=42)  # type: ignore[arg-type]
    await checkout.enqueue(workflow_run, payload=ORDER)  # type: ignore[arg-type]
    await workflow_run.wait_for_event("approved", timeout="soon")  # type: ignore[arg-type]

    await charge.run(workflow_run, payload="order-42")  # type: ignore[arg-type]
    await charge.run(client, payload=ORDER)  # type: ignore[arg-type]
    await count_items.run(workflow_run, payload=[1, 2])  # type: ignore[list-item]

    handle = await checkout.enqueue(client, payload=ORDER)
    not_a_receipt: str = await handle.wait_for_completion()  # type: ignore[assignment]
    del not_a_receipt

    aiki.Registry().add(charge)  # type: ignore[arg-type]


def _definition_misuses() -> None:
    async def two_args(ctx: aiki.TaskContext[Order], extra: int) -> None:
        return None

    def sync_workflow(workflow_run: aiki.WorkflowRun[Order]) -> Receipt:
        return Receipt(order_id=1, charged_cents=1)

    aiki.task(name="charge", run=two_args)  # type: ignore[arg-type]
    aiki.task(name="charge")(two_args)  # type: ignore[arg-type]
    aiki.task(name="charge", run=_refund, retry=3)  # type: ignore[call-overload]
    aiki.task(name=1, run=_refund)  # type: ignore[call-overload]
    aiki.workflow(name="checkout", version=1.0, run=checkout.execute)  # type: ignore[call-overload]
    aiki.workflow(name="checkout", version="1", run=sync_workflow)  # type: ignore[arg-type]
    aiki.workflow(name="checkout", version="1")(sync_workflow)  # type: ignore[arg-type]
    aiki.Retry.fixed(max_attempts="3", delay_ms=10)  # type: ignore[arg-type]


def test_the_typed_definitions_are_valid_at_runtime() -> None:
    assert [charge.name, count_items.name, refund.name] == ["charge-card", "count-items", "refund"]
    assert [str(checkout.key), str(ship.key)] == ["checkout@1.0.0", "ship@1"]
