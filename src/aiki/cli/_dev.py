"""`aiki dev`: server, storage and a worker with the example workflows, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Any

import click

import aiki
from aiki import examples
from aiki._core.states import RunState


@click.command()
@click.option(
    "--storage",
    default="sqlite:///.aiki/aiki.db",
    show_default=True,
    envvar="AIKI_STORAGE",
    help="Storage URL [env: AIKI_STORAGE].",
)
@click.option(
    "--exit-when-done",
    is_flag=True,
    help="Stop once the example runs have ended instead of serving until Ctrl-C.",
)
def dev(storage: str, exit_when_done: bool) -> None:
    """Run Aiki in one process: storage, server and a worker with the example workflows.

    The example runs (the concept document's morning routine and user onboarding v1 and v2)
    are enqueued at start and their results and timelines printed.
    """
    asyncio.run(_dev(storage, exit_when_done))


async def _dev(storage: str, exit_when_done: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with aiki.server(storage) as srv:
        client = await aiki.create_client(server=srv)
        worker = await aiki.worker(client, id="dev-worker")
        for workflow in examples.registry():
            worker.registry.add(workflow)
        async with worker:
            click.echo(f"Aiki dev: storage {storage}, worker {worker.id!r} serving:")
            for key in worker.registry.keys:
                click.echo(f"  - {key}")
            handles: list[aiki.RunHandle[Any]] = [
                await examples.morning_routine.enqueue(client, payload={"user_id": "123"}),
                await examples.user_onboarding_v1.enqueue(client, payload={"user_id": "u-1"}),
                await examples.user_onboarding_v2.enqueue(client, payload={"user_id": "u-2"}),
            ]
            for handle in handles:
                await _show(handle)
            if exit_when_done:
                return
            click.echo("\nServing; press Ctrl-C to stop.")
            await stop.wait()
            click.echo("Stopping: running work gets the grace period, the rest is handed back.")


async def _show(handle: aiki.RunHandle[Any]) -> None:
    with contextlib.suppress(aiki.WorkflowRunError):
        await handle.wait_for_completion(timeout=30)
    status = await handle.get_status()
    click.echo(f"\nrun {status.id}  {status.workflow}@{status.version}  {status.state}")
    if status.state is RunState.COMPLETED:
        click.echo(f"  result: {json.dumps(status.result)}")
    elif status.error is not None:
        click.echo(f"  error: {status.error.type}: {status.error.message}")
    for event in await handle.get_history():
        detail = event.data.get("task", "")
        click.echo(f"  {event.at:%H:%M:%S.%f}  {event.kind.value:<16} {detail}")
