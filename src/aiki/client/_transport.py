"""How `HttpApi` sends a request: a small seam over the HTTP client library.

The default is aiohttp: about a quarter of the CPU per request of the alternatives measured,
which matters because a run's progress is a chain of small requests (bench/service.py). Tests
put other transports behind the same seam (an in-process ASGI app, injected failures).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

# Idle pooled connections are closed by the client before the server (uvicorn keeps them
# 75 s in `aiki server`), so a request never goes out on a connection the server just closed.
KEEPALIVE_S = 30.0
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Reply:
    """A response, read in full."""

    status: int
    content_type: str
    content: bytes
    url: str

    @property
    def is_success(self) -> bool:
        """2xx."""
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        """The body as text, for error messages."""
        return self.content.decode(errors="replace")


class RequestNotSentError(Exception):
    """The request never reached the server (no connection): safe to send again."""


class RequestFailedError(Exception):
    """The request may have reached the server, but no reply came back."""


class HttpTransport(Protocol):
    """Sends one request and reads the whole reply."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None,
        params: Mapping[str, str | int | float] | None,
        headers: Mapping[str, str],
        read_timeout: float,
    ) -> Reply:
        """Raises `RequestNotSentError` or `RequestFailedError` when no reply comes."""
        ...

    async def aclose(self) -> None:
        """Close pooled connections."""
        ...


class AiohttpTransport:
    """One pooled aiohttp session, closed by `aclose()` or, at the latest, with its event loop.

    A program that never closes its client (it exits, or forgets) must not print aiohttp's
    "Unclosed client session" warnings: a task of the transport's own holds the session and
    closes it when cancelled, which `asyncio.run()` does to every task left as it returns.
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._keeper: asyncio.Task[None] | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the event loop it was made in.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                # Long-polls hold a connection each: many waits at once need many connections.
                limit=1000,
                keepalive_timeout=KEEPALIVE_S,
            )
            session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
            self._session = session
            self._keeper = asyncio.create_task(_keep(session), name="aiki client session")
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None,
        params: Mapping[str, str | int | float] | None,
        headers: Mapping[str, str],
        read_timeout: float,
    ) -> Reply:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=read_timeout
        )
        try:
            async with self._open().request(
                method,
                url,
                data=content,
                params=None if params is None else {k: str(v) for k, v in params.items()},
                headers=headers,
                timeout=timeout,
            ) as response:
                body = await response.read()
                return Reply(
                    status=response.status,
                    content_type=response.headers.get("content-type", ""),
                    content=body,
                    url=str(response.url),
                )
        except aiohttp.ClientConnectorError as exc:  # refused, unreachable, DNS: never sent
            raise RequestNotSentError(_describe(exc)) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RequestFailedError(_describe(exc)) from exc

    async def aclose(self) -> None:
        keeper, self._keeper, self._session = self._keeper, None, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.wait([keeper])  # it closes the session on its way out


async def _keep(session: aiohttp.ClientSession) -> None:
    """Hold `session` until cancelled (by `aclose()`, or by the loop shutting down); close it."""
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
