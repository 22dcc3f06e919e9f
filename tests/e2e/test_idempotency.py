"""Idempotency keys: one run per key and payload, whoever asks and however often."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

import aiki
from aiki.examples import NewUser, morning_routine, user_onboarding_v1, user_onboarding_v2
from conftest import WorkerFactory


async def test_same_key_same_payload_returns_the_existing_run(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    first = await morning_routine.enqueue(
        client, payload={"u": 1}, idempotency_key="k", allow_unknown=True
    )
    await make_worker(morning_routine)
    await first.wait_for_completion(timeout=10)

    again = await morning_routine.enqueue(
        client, payload={"u": 1}, idempotency_key="k", allow_unknown=True
    )

    assert again.id == first.id
    assert (await again.get_status()).state is aiki.RunState.COMPLETED


async def test_payload_key_order_does_not_matter(client: aiki.Client) -> None:
    first = await morning_routine.enqueue(
        client, payload={"a": 1, "b": 2}, idempotency_key="k", allow_unknown=True
    )
    again = await morning_routine.enqueue(
        client, payload={"b": 2, "a": 1}, idempotency_key="k", allow_unknown=True
    )
    assert again.id == first.id


async def test_same_key_other_payload_is_refused(client: aiki.Client) -> None:
    first = await morning_routine.enqueue(
        client, payload={"u": 1}, idempotency_key="k", allow_unknown=True
    )

    with pytest.raises(aiki.IdempotencyConflictError) as conflict:
        await morning_routine.enqueue(
            client, payload={"u": 2}, idempotency_key="k", allow_unknown=True
        )

    assert conflict.value.run_id == first.id
    assert "'k'" in str(conflict.value) and "morning-routine" in str(conflict.value)
    assert len(await client.list_runs()) == 1


async def test_keys_are_per_workflow_version(client: aiki.Client) -> None:
    v1 = await user_onboarding_v1.enqueue(
        client, payload={"user_id": "u"}, idempotency_key="k", allow_unknown=True
    )
    v2 = await user_onboarding_v2.enqueue(
        client, payload=NewUser(user_id="u"), idempotency_key="k", allow_unknown=True
    )
    assert v1.id != v2.id


async def test_fifty_concurrent_enqueues_make_one_run(client: aiki.Client) -> None:
    handles = await asyncio.gather(
        *(
            morning_routine.enqueue(
                client, payload={"u": 1}, idempotency_key="race", allow_unknown=True
            )
            for _ in range(50)
        )
    )

    assert len({h.id for h in handles}) == 1
    runs = await client.list_runs(workflow="morning-routine")
    assert len(runs) == 1
    history = await handles[0].get_history()
    assert [e.kind.value for e in history] == ["run_enqueued"]


async def test_without_key_every_enqueue_is_a_new_run(client: aiki.Client) -> None:
    a: aiki.RunHandle[Any] = await morning_routine.enqueue(client, payload={}, allow_unknown=True)
    b: aiki.RunHandle[Any] = await morning_routine.enqueue(client, payload={}, allow_unknown=True)
    assert a.id != b.id


async def test_enqueue_by_name_refuses_an_unknown_workflow(
    client: aiki.Client, make_worker: WorkerFactory
) -> None:
    from aiki._core.models import NewRun

    by_name = NewRun(workflow="morning-routine", version="9.9.9", payload_json="{}")
    with pytest.raises(aiki.WorkflowNotFoundError) as unknown:
        await client.enqueue(by_name)
    assert unknown.value.known == ()
    assert str(unknown.value) == (
        "no worker has registered workflow 'morning-routine' version '9.9.9', nor any other "
        "version of it; enqueue with allow_unknown=True (--allow-unknown) to create the run anyway"
    )
    assert await client.list_runs() == []

    await make_worker(morning_routine)  # registering defines 1.0.0
    with pytest.raises(aiki.WorkflowNotFoundError) as still_unknown:
        await client.enqueue(by_name)
    assert still_unknown.value.known == ("1.0.0",)

    known = replace(by_name, version="1.0.0")
    handle = await client.enqueue(known)
    assert await handle.wait_for_completion(timeout=10) == {
        "alarm_result": "Wake up!",
        "stretch_result": 300,
    }
