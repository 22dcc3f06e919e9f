"""Connecting commands to a server, and turning Aiki errors into clean CLI errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

import aiki

T = TypeVar("T")

# A person is waiting: give up on an unreachable server sooner than a worker would.
_CLI_RETRY_TIMEOUT_S = 5.0


def run_with_client(
    server_url: str, api_key: str | None, action: Callable[[aiki.Client], Awaitable[T]]
) -> T:
    """Run `action` with a client of the server at `server_url`; errors exit with a message."""

    async def main() -> T:
        async with await aiki.create_client(
            url=server_url, api_key=api_key, retry_timeout=_CLI_RETRY_TIMEOUT_S
        ) as client:
            return await action(client)

    try:
        return asyncio.run(main())
    except aiki.ServerUnavailableError as exc:
        raise click.ClickException(f"cannot reach the Aiki server at {server_url}: {exc}") from exc
    except aiki.AikiError as exc:
        raise click.ClickException(str(exc)) from exc
