"""`aiki workers`: the workers a server has heard from, and which of them are alive."""

from __future__ import annotations

import click

import aiki
from aiki._core.models import WorkerInfo
from aiki.cli._connect import run_with_client
from aiki.cli._options import api_key_option, json_option, server_url_option
from aiki.cli._output import table, to_json, when


@click.command("workers")
@server_url_option
@api_key_option
@json_option
def workers_command(server_url: str, api_key: str | None, as_json: bool) -> None:
    """List workers, live ones first.

    A worker is alive while its heartbeats keep coming: one silent for longer than its lease
    (a killed process, a lost network) is listed as gone.
    """

    async def action(client: aiki.Client) -> list[WorkerInfo]:
        return await client.api.list_workers()

    workers = sorted(
        run_with_client(server_url, api_key, action),
        key=lambda w: (not w.alive, -w.last_seen_ms, w.id),
    )
    if as_json:
        click.echo(to_json(workers))
        return
    table(
        ["WORKER", "STATUS", "WORKFLOWS", "LAST SEEN", "ALIVE UNTIL"],
        [
            (
                w.id,
                "alive" if w.alive else "gone",
                ", ".join(str(key) for key in w.workflows) or "-",
                when(w.last_seen_ms),
                when(w.alive_until_ms),
            )
            for w in workers
        ],
    )
