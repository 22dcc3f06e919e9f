"""`aiki runs ...` and `aiki workflows list`: look at and act on runs through a server."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import click

import aiki
from aiki._core.models import EventKind, EventSent, HistoryEvent, NewRun, sleep_name
from aiki._core.serde import encode
from aiki._core.states import RunState
from aiki.cli._connect import run_with_client
from aiki.cli._options import api_key_option, json_option, server_url_option
from aiki.cli._output import describe_run, plain, table, to_json, when


@click.group("runs")
def runs_group() -> None:
    """List, inspect, cancel and enqueue workflow runs; send them events."""


@runs_group.command("list")
@click.option("--workflow", default=None, help="Only runs of this workflow name.")
@click.option(
    "--state",
    type=click.Choice([s.value for s in RunState]),
    default=None,
    help="Only runs in this state.",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--after", default=None, help="Run id of the previous page's last row.")
@server_url_option
@api_key_option
@json_option
def list_runs(
    workflow: str | None,
    state: str | None,
    limit: int,
    after: str | None,
    server_url: str,
    api_key: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first."""

    async def action(client: aiki.Client) -> list[aiki.RunStatus]:
        return await client.list_runs(workflow=workflow, state=state, after=after, limit=limit)

    runs = run_with_client(server_url, api_key, action)
    if as_json:
        click.echo(to_json(runs))
        return
    table(
        ["ID", "WORKFLOW", "VERSION", "STATE", "ATTEMPT", "CREATED", "UPDATED"],
        [
            (
                r.id,
                r.workflow,
                r.version,
                r.state,
                r.attempt,
                when(r.created_at_ms),
                when(r.updated_at_ms),
            )
            for r in runs
        ],
    )
    if len(runs) == limit:
        click.echo(f"\nmore: --after {runs[-1].id}")


@runs_group.command("show")
@click.argument("run_id")
@server_url_option
@api_key_option
@json_option
def show_run(run_id: str, server_url: str, api_key: str | None, as_json: bool) -> None:
    """Show a run: status, result or error, and its history as a timeline."""

    async def action(client: aiki.Client) -> tuple[aiki.RunStatus, list[aiki.HistoryEvent]]:
        handle = client.get_handle(run_id)
        return await handle.get_status(), await handle.get_history()

    status, history = run_with_client(server_url, api_key, action)
    if as_json:
        # The run's record as `runs list --json` prints it, with its history beside.
        click.echo(to_json(plain(status) | {"history": plain(history)}))
    else:
        describe_run(status, history)
        _describe_sleeps(history)


def _describe_sleeps(history: list[aiki.HistoryEvent]) -> None:
    """The run's durable sleeps, which the timeline lists as `aiki.sleep/<name>` tasks."""
    rows = [(name, event) for event in history if (name := _sleep_recorded(event)) is not None]
    if not rows:
        return
    click.echo("\nsleeps")
    for name, event in rows:
        duration = int(event.data.get("duration_ms") or 0)
        click.echo(
            f"  {name} #{event.data.get('index', 0) + 1}  {duration} ms  "
            f"from {when(event.at_ms)}  until about {when(event.at_ms + duration)}"
        )


def _sleep_recorded(event: HistoryEvent) -> str | None:
    if event.kind is not EventKind.TASK_COMPLETED:
        return None
    return sleep_name(str(event.data.get("task")))


@runs_group.command("cancel")
@click.argument("run_id")
@click.option("--reason", default=None, help="Why; stored with the run.")
@server_url_option
@api_key_option
@json_option
def cancel_run(
    run_id: str, reason: str | None, server_url: str, api_key: str | None, as_json: bool
) -> None:
    """Cancel a run (a running one at its worker's next chance)."""

    async def action(client: aiki.Client) -> aiki.RunStatus:
        return await client.get_handle(run_id).cancel(reason)

    status = run_with_client(server_url, api_key, action)
    if as_json:
        click.echo(to_json(status))
    elif status.state is RunState.CANCELLED:
        click.echo(f"run {status.id} cancelled")
    elif status.state.is_final:
        click.echo(f"run {status.id} had already ended: {status.state}")
    else:
        click.echo(f"run {status.id} is {status.state}: cancel requested from its worker")


def _json_value(text: str, option: str) -> Any:
    """The value of a JSON `option`.

    Raises:
        click.BadParameter: not JSON.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from exc


@runs_group.command("send-event")
@click.argument("run_id")
@click.argument("name")
@click.option("--data", default="null", show_default=True, help="The event's data, as JSON.")
@click.option("--key", "idempotency_key", default=None, help="Same key and name: sent once.")
@server_url_option
@api_key_option
@json_option
def send_event(
    run_id: str,
    name: str,
    data: str,
    idempotency_key: str | None,
    server_url: str,
    api_key: str | None,
    as_json: bool,
) -> None:
    """Send the event NAME to a run: what its `wait_for_event(NAME)` returns."""
    value = _json_value(data, "--data")

    async def action(client: aiki.Client) -> EventSent:
        return await client.get_handle(run_id).send_event(name, value, idempotency_key)

    sent = run_with_client(server_url, api_key, action)
    if as_json:
        click.echo(to_json(sent))
    elif sent.created:
        click.echo(f"event {name!r} sent to run {run_id} (seq {sent.seq})")
    else:
        click.echo(
            f"event {name!r} was already sent to run {run_id} with this key (seq {sent.seq})"
        )


@runs_group.command("enqueue")
@click.argument("workflow")
@click.argument("version")
@click.option("--payload", default="null", show_default=True, help="The payload, as JSON.")
@click.option("--idempotency-key", default=None, help="Same key and payload: same run.")
@click.option(
    "--allow-unknown",
    is_flag=True,
    help="Enqueue even if no worker has registered this workflow version yet.",
)
@click.option("--wait", is_flag=True, help="Wait for the run to end and print its result.")
@click.option("--timeout", default=None, type=float, help="With --wait: seconds to wait at most.")
@server_url_option
@api_key_option
@json_option
def enqueue_run(
    workflow: str,
    version: str,
    payload: str,
    idempotency_key: str | None,
    allow_unknown: bool,
    wait: bool,
    timeout: float | None,
    server_url: str,
    api_key: str | None,
    as_json: bool,
) -> None:
    """Enqueue a run of WORKFLOW at VERSION."""
    value = _json_value(payload, "--payload")
    new = NewRun(
        workflow=workflow,
        version=version,
        payload_json=encode(value, what=f"workflow {workflow!r} payload", limit=None),
        idempotency_key=idempotency_key,
        allow_unknown=allow_unknown,
    )

    async def action(client: aiki.Client) -> aiki.RunStatus:
        handle = await client.enqueue(new)
        if wait:
            # The status printed below says how it ended.
            with contextlib.suppress(aiki.WorkflowRunError, TimeoutError):
                await handle.wait_for_completion(timeout=timeout)
        return await handle.get_status()

    status = run_with_client(server_url, api_key, action)
    if as_json:
        click.echo(to_json(status))
        return
    click.echo(f"run {status.id}  {status.workflow}@{status.version}  {status.state}")
    if status.note:
        click.echo(f"note: {status.note}")
    if wait and status.state is RunState.COMPLETED:
        click.echo(json.dumps(status.result))
    elif wait and status.error is not None:
        raise click.ClickException(f"{status.error.type}: {status.error.message}")


@click.group("workflows")
def workflows_group() -> None:
    """Workflow versions the server knows."""


@workflows_group.command("list")
@server_url_option
@api_key_option
@json_option
def list_workflows(server_url: str, api_key: str | None, as_json: bool) -> None:
    """Workflow versions, their live workers and run counts by state."""

    async def action(client: aiki.Client) -> list[Any]:
        return await client.api.list_workflows()

    summaries = run_with_client(server_url, api_key, action)
    if as_json:
        click.echo(to_json(summaries))
        return
    states = [s.value for s in RunState]
    table(
        ["WORKFLOW", "VERSION", "LIVE WORKERS", *(s.upper() for s in states)],
        [
            (
                s.name,
                s.version,
                ", ".join(s.live_workers) or "-",
                *(s.runs.get(state, 0) for state in states),
            )
            for s in summaries
        ],
    )
