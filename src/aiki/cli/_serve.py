"""`aiki server` and `aiki migrate`."""

from __future__ import annotations

import click

import aiki
from aiki.cli._connect import run_command
from aiki.cli._http import HttpServer, listen, stop_event_on_signals
from aiki.cli._options import api_key_option, storage_option


@click.command("server")
@storage_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="AIKI_HOST",
    help="Address to listen on [env: AIKI_HOST].",
)
@click.option(
    "--port",
    default=9090,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar="AIKI_PORT",
    help="Port to listen on; 0 picks a free one [env: AIKI_PORT].",
)
@api_key_option
@click.option(
    "--queue",
    default=None,
    envvar="AIKI_QUEUE",
    help="How servers sharing the storage announce new work to each other: "
    "redis://host:6379/0[?namespace=NAME]; by default, claims from storage "
    "(with LISTEN/NOTIFY on PostgreSQL) [env: AIKI_QUEUE].",
)
@click.option(
    "--notify/--no-notify",
    default=True,
    show_default=True,
    envvar="AIKI_NOTIFY",
    help="On PostgreSQL without --queue: wake the other servers with NOTIFY; off, they "
    "find new work by looking at storage again [env: AIKI_NOTIFY].",
)
def server_command(
    storage: str, host: str, port: int, api_key: str | None, queue: str | None, notify: bool
) -> None:
    """Serve the Aiki HTTP API (migrations are applied on start).

    Several servers may share one PostgreSQL database. Stops gracefully on SIGINT or SIGTERM.
    """
    run_command(serve(storage, host, port, api_key, queue=queue, notify=notify))


async def serve(
    storage: str,
    host: str,
    port: int,
    api_key: str | None,
    *,
    queue: str | None = None,
    notify: bool = True,
) -> None:
    """Run an Aiki server on `host:port` until SIGINT or SIGTERM."""
    stop = stop_event_on_signals()
    with listen(host, port) as sock:
        async with aiki.server(storage, api_key=api_key, queue=queue, notify=notify) as srv:
            http = HttpServer(srv.app, sock)
            url = await http.start()
            click.echo(
                f"Aiki server listening on {url} (storage {storage}, queue {srv.queue.description})"
            )
            await stop.wait()
            click.echo("Aiki server stopping")
            srv.service.begin_shutdown()  # long-polls answer now instead of holding up the exit
            await http.stop()


@click.command("migrate")
@storage_option
def migrate_command(storage: str) -> None:
    """Apply the storage's pending migrations, then exit."""

    async def main() -> None:
        async with aiki.server(storage):
            pass

    run_command(main())
    click.echo(f"storage {storage} is up to date")
