"""Serving an Aiki server's ASGI app with uvicorn, inside our own event loop and signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp


class _Http(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The command owns SIGINT/SIGTERM: it stops workers and storage in order, then uvicorn.
        yield


class HttpServer:
    """uvicorn on `host:port`, started and stopped by the caller."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=5,
            # Longer than the client's idle keep-alive, so the client closes idle connections
            # first and never sends on one the server is closing.
            timeout_keep_alive=75,
        )
        self._server = _Http(config)
        self._task: asyncio.Task[None] | None = None
        self.host = host

    async def start(self) -> str:
        """Start listening; returns the base URL (with the real port when 0 was asked)."""
        self._task = asyncio.create_task(self._server.serve(), name="aiki http")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)  # uvicorn offers no event for "listening"
        if self._task.done():
            await self._task  # it could not start (port taken): raise why
            raise OSError(f"could not listen on {self.host}")
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to 5 s), close."""
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task


def stop_event_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
