"""Serving an Aiki server's ASGI app with uvicorn, inside our own event loop and signals."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
from collections.abc import Generator

import click
import uvicorn
from starlette.types import ASGIApp


class _Http(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The command owns SIGINT/SIGTERM: it stops workers and storage in order, then uvicorn.
        yield


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host:port` (0: a free port), for `HttpServer`.

    Bound before storage is opened, so a port already taken fails the command at once.

    Raises:
        click.ClickException: the address cannot be bound, e.g. the port is in use.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets
    # that say they are TCP, and accepted connections inherit the listener's proto. Without it
    # uvicorn's two writes per reply (head, then body) meet the client's delayed ACK, a ~40 ms
    # stall on many replies under load.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise click.ClickException(
                f"cannot listen on {host}:{port}: the port is already in use (another Aiki "
                "server?); stop that program or choose another port with --port"
            ) from None
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    return sock


class HttpServer:
    """uvicorn on a listening socket (see `listen`), started and stopped by the caller."""

    def __init__(self, app: ASGIApp, sock: socket.socket) -> None:
        host, port = sock.getsockname()[:2]
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
        self._socket = sock
        self._task: asyncio.Task[None] | None = None
        self.host = host

    async def start(self) -> str:
        """Start listening; returns the base URL (with the real port when 0 was asked)."""
        self._task = asyncio.create_task(
            self._server.serve(sockets=[self._socket]), name="aiki http"
        )
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)  # uvicorn offers no event for "listening"
        if self._task.done():
            await self._task  # it could not start: raise why
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
