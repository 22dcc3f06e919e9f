"""`aiki`: the command group."""

from __future__ import annotations

import click

from aiki.cli._dev import dev


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aiki")
def cli() -> None:
    """Aiki: durable workflows as plain async Python."""


cli.add_command(dev)


def main() -> None:
    """Entry point of the `aiki` script."""
    cli()
