"""Connecting commands to a server, and turning Aiki errors into clean CLI errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

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

    return run_command(main(), server_url=server_url)


def run_command(main: Coroutine[Any, Any, T], *, server_url: str | None = None) -> T:
    """`asyncio.run(main)`; an Aiki error ends the command with its one-line message.

    A person reads it: the cause (a storage URL Aiki has no backend for, a database that does
    not exist, a wrong API key) says more than a traceback would. `server_url` names the server
    the command talks to, if any.
    """
    try:
        return asyncio.run(main)
    except aiki.ServerUnavailableError as exc:
        raise click.ClickException(f"cannot reach the Aiki server at {server_url}: {exc}") from exc
    except aiki.UnauthorizedError as exc:
        raise click.ClickException(
            f"the Aiki server at {server_url} refused the request: {exc}; "
            "pass the server's key with --api-key or AIKI_API_KEY"
        ) from exc
    except aiki.AikiError as exc:
        raise click.ClickException(str(exc)) from exc
