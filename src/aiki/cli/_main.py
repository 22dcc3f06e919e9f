"""`aiki`: the command group."""

from __future__ import annotations

import click

from aiki.cli._dev import dev
from aiki.cli._runs import runs_group, workflows_group
from aiki.cli._serve import migrate_command, server_command
from aiki.cli._worker import worker_command
from aiki.cli._workers import workers_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aiki")
def cli() -> None:
    """Aiki: durable workflows as plain async Python."""


for command in (
    dev,
    server_command,
    worker_command,
    migrate_command,
    runs_group,
    workflows_group,
    workers_command,
):
    cli.add_command(command)


def main() -> None:
    """Entry point of the `aiki` script."""
    cli()
