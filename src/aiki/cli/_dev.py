"""`aiki dev`: HTTP server, storage and a worker with the example workflows, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import click

import aiki
from aiki import examples
from aiki._core.models import sleep_name
from aiki._core.states import RunState
from aiki.cli._connect import run_command
from aiki.cli._http import HttpServer, listen, stop_event_on_signals
from aiki.cli._options import storage_option
from aiki.cli._output import timeline


@click.command()
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=9090,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--exit-when-done",
    is_flag=True,
    help="Stop once the example runs have ended instead of serving until Ctrl-C.",
)
def dev(storage: str, host: str, port: int, exit_when_done: bool) -> None:
    """Run Aiki in one process: storage, HTTP server and a worker with the example workflows.

    The example runs (the morning routine, v1 and v2 with a durable sleep, and user
    onboarding v1 and v2) are enqueued at start and their results and timelines printed.
    """
    run_command(_dev(storage, host, port, exit_when_done))


async def _dev(storage: str, host: str, port: int, exit_when_done: bool) -> None:
    stop = stop_event_on_signals()
    with listen(host, port) as sock:
        async with aiki.server(storage) as srv:
            http = HttpServer(srv.app, sock)
            url = await http.start()
            await _run_examples(srv, url, storage, None if exit_when_done else stop)
            srv.service.begin_shutdown()
            await http.stop()


async def _run_examples(
    srv: aiki.Server, url: str, storage: str, serve_until: asyncio.Event | None
) -> None:
    """A worker with the examples; one run of each, shown; then serve until `serve_until`."""
    client = await aiki.create_client(server=srv)
    worker = await aiki.worker(client, id="dev-worker")
    for workflow in examples.registry():
        worker.registry.add(workflow)
    async with worker:
        click.echo(f"Aiki dev: HTTP API on {url} (OpenAPI at {url}/openapi.json)")
        click.echo(f"dashboard: {url}/dashboard/")
        click.echo(f"storage {storage}; worker {worker.id!r} serving:")
        for key in worker.registry.keys:
            click.echo(f"  - {key}")
        handles: list[aiki.RunHandle[Any]] = [
            await examples.morning_routine.enqueue(client, payload={"user_id": "123"}),
            # With a durable two-second coffee break between its tasks.
            await examples.morning_routine_v2.enqueue(client, payload={"user_id": "123"}),
            await examples.user_onboarding_v1.enqueue(client, payload={"user_id": "u-1"}),
            await examples.user_onboarding_v2.enqueue(
                client, payload=examples.NewUser(user_id="u-2")
            ),
        ]
        for handle in handles:
            await _show(handle)
        if serve_until is not None:
            click.echo(
                "\nServing; press Ctrl-C to stop. From another terminal, try:\n"
                f"  uv run aiki runs enqueue morning-routine 1.0.0 --payload '{{}}' --wait"
                f" --server {url}\n"
                f"  uv run aiki runs list --server {url}\n"
                f"  uv run aiki workflows list --server {url}"
            )
            await serve_until.wait()
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
    for event, label in timeline(await handle.get_history()):
        sleep = sleep_name(str(event.data.get("task", "")))
        detail = (
            f"{sleep!r} {event.data.get('duration_ms')} ms" if sleep else event.data.get("task", "")
        )
        click.echo(f"  {event.at:%H:%M:%S.%f}  {label:<16} {detail}")
