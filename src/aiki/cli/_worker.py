"""`aiki worker MODULE:ATTR`: a worker process serving the workflows that ATTR names."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from typing import Any

import click

import aiki
from aiki.cli._connect import run_command
from aiki.cli._options import api_key_option, server_url_option

_RETRY_START_MS = (100, 30_000)
_SUBSCRIBER = aiki.SubscriberConfig()  # the defaults
_RUN = aiki.WorkflowRunConfig()


def load_registry(spec: str) -> aiki.Registry:
    """Resolve MODULE:ATTR to a registry.

    ATTR is a workflow, a list of them, a registry, or a function returning one of those.

    Raises:
        click.BadParameter: the spec cannot be imported or names something else.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(f"{spec!r}: expected MODULE:ATTR, e.g. myapp.workflows:registry")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current folder
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.BadParameter(f"module {module_name!r} has no attribute {attr!r}") from None
    if callable(target) and not isinstance(target, aiki.Workflow):
        target = target()
    return _registry_of(target, spec)


def _registry_of(target: object, spec: str) -> aiki.Registry:
    if isinstance(target, aiki.Registry):
        return target
    if isinstance(target, aiki.Workflow):
        return aiki.Registry().add(target)
    if (
        isinstance(target, list | tuple)
        and target
        and all(isinstance(wf, aiki.Workflow) for wf in target)
    ):
        registry = aiki.Registry()
        for wf in target:
            registry.add(wf)
        return registry
    raise click.BadParameter(
        f"{spec!r} is a {type(target).__name__}: expected a workflow, a list of workflows or "
        "an aiki.Registry"
    )


@click.command("worker")
@click.argument("target", metavar="MODULE:ATTR")
@server_url_option
@api_key_option
@click.option(
    "--id",
    "worker_id",
    default=None,
    envvar="AIKI_WORKER_ID",
    help="Worker id; host name and process id by default [env: AIKI_WORKER_ID].",
)
@click.option(
    "--concurrency",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="AIKI_CONCURRENCY",
    help="Most runs at once [env: AIKI_CONCURRENCY].",
)
@click.option(
    "--heartbeat-ms",
    default=_RUN.heartbeat_interval_ms,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="AIKI_HEARTBEAT_MS",
    help="Heartbeat interval; leases last three of them, and a worker silent for a lease "
    "counts as gone [env: AIKI_HEARTBEAT_MS].",
)
@click.option(
    "--grace-ms",
    default=5_000,
    show_default=True,
    type=click.IntRange(min=0),
    envvar="AIKI_GRACE_MS",
    help="How long a stop lets running runs finish [env: AIKI_GRACE_MS].",
)
@click.option(
    "--batch",
    default=None,
    type=click.IntRange(min=1),
    envvar="AIKI_BATCH",
    help="Most runs taken in one claim; by default as many as there are free slots "
    "[env: AIKI_BATCH].",
)
@click.option(
    "--poll-interval-ms",
    default=_SUBSCRIBER.poll_interval_ms,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="AIKI_POLL_INTERVAL_MS",
    help="While no work comes, how often the server looks at storage again in case a wake-up "
    "was missed [env: AIKI_POLL_INTERVAL_MS].",
)
@click.option(
    "--max-retry-delay-ms",
    default=_SUBSCRIBER.max_retry_delay_ms,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="AIKI_MAX_RETRY_DELAY_MS",
    help="Longest pause between tries while the server cannot be reached "
    "[env: AIKI_MAX_RETRY_DELAY_MS].",
)
def worker_command(
    target: str,
    server_url: str,
    api_key: str | None,
    worker_id: str | None,
    concurrency: int,
    heartbeat_ms: int,
    grace_ms: int,
    batch: int | None,
    poll_interval_ms: int,
    max_retry_delay_ms: int,
) -> None:
    """Run a worker for the workflows MODULE:ATTR names (SIGTERM/SIGINT stop it gracefully)."""
    registry = load_registry(target)
    options: dict[str, Any] = {
        "id": worker_id,
        "max_concurrent_workflow_runs": concurrency,
        "workflow_run": aiki.WorkflowRunConfig(heartbeat_interval_ms=heartbeat_ms),
        "workflow_run_subscriber": aiki.SubscriberConfig(
            max_batch_size=batch,
            poll_interval_ms=poll_interval_ms,
            max_retry_delay_ms=max_retry_delay_ms,
        ),
        "graceful_shutdown_timeout_ms": grace_ms,
    }
    run_command(_run(registry, server_url, api_key, options), server_url=server_url)


async def _run(
    registry: aiki.Registry, server_url: str, api_key: str | None, options: dict[str, Any]
) -> None:
    """Serve until SIGINT or SIGTERM; `options` are `aiki.worker()`'s."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with await aiki.create_client(url=server_url, api_key=api_key) as client:
        worker = await aiki.worker(client, **options)
        for workflow in registry:
            worker.registry.add(workflow)
        if not await _start(worker, server_url, stop):
            return
        keys = ", ".join(str(key) for key in worker.registry.keys)
        click.echo(f"Aiki worker {worker.id} serving {keys} from {server_url}")
        await stop.wait()
        grace_ms = options["graceful_shutdown_timeout_ms"]
        click.echo(f"worker {worker.id} stopping (grace {grace_ms} ms)")
        await worker.stop()


async def _start(worker: aiki.Worker, server_url: str, stop: asyncio.Event) -> bool:
    """Start the worker, waiting for the server to come up; False if stopped first."""
    delay_ms, max_ms = _RETRY_START_MS
    while not stop.is_set():
        try:
            await worker.start()
            return True
        except aiki.ServerUnavailableError:
            click.echo(f"server {server_url} unavailable; retrying in {delay_ms} ms", err=True)
        try:
            await asyncio.wait_for(stop.wait(), delay_ms / 1000)
        except TimeoutError:
            delay_ms = min(delay_ms * 2, max_ms)
    return False
