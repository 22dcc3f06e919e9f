"""`Server` and `aiki.server()`: storage, the service layer and the timer runtime together."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from starlette.applications import Starlette

from aiki._core.clock import Clock, SystemClock
from aiki._core.serde import DEFAULT_MAX_PAYLOAD_BYTES
from aiki.config import DEFAULT_MAX_RECOVERY_ATTEMPTS, DEFAULT_STORAGE_URL, ServerSettings
from aiki.errors import ConfigError
from aiki.queue import Queue, open_queue
from aiki.server._app import create_app
from aiki.server._service import Service
from aiki.server._timers import TimerLoop
from aiki.storage import Storage, open_storage


class Server:
    """An Aiki server: use it as `async with aiki.server(...) as srv:`.

    Starting opens storage (applying migrations) and the timer runtime; stopping ends both.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        settings: ServerSettings,
        clock: Clock,
        api_key: str | None = None,
        queue: Queue | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.clock = clock
        self.queue: Queue = queue or open_queue(None, storage_url=None)
        self._service = Service(storage, settings, self.queue)
        self._timers: asyncio.Task[None] | None = None
        self._api_key = api_key
        self._app: Starlette | None = None

    @property
    def service(self) -> Service:
        """The service layer, which an in-process client calls directly."""
        return self._service

    @property
    def app(self) -> Starlette:
        """The HTTP JSON API (and its OpenAPI document) as an ASGI app, e.g. for uvicorn."""
        if self._app is None:
            self._app = create_app(self, api_key=self._api_key)
        return self._app

    @property
    def running(self) -> bool:
        """Whether the server was started and not stopped since."""
        return self._timers is not None

    async def start(self) -> None:
        """Open storage and the queue, and start the timer runtime."""
        if self._timers is not None:
            return
        await self.storage.open()
        await self.queue.open(self._service.receive)
        self._service.accept_long_polls()
        self._timers = asyncio.create_task(
            TimerLoop(self._service, self.clock).run(), name="aiki timers"
        )

    async def stop(self) -> None:
        """Stop the runtime and close storage; queued writes are finished first."""
        timers, self._timers = self._timers, None
        if timers is None:
            return
        self._service.begin_shutdown()
        timers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timers
        await self._service.close()
        await self.queue.close()
        await self.storage.close()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def server(
    storage: str | Storage = DEFAULT_STORAGE_URL,
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_recovery_attempts: int = DEFAULT_MAX_RECOVERY_ATTEMPTS,
    clock: Clock | None = None,
    api_key: str | None = None,
    queue: str | Queue | None = None,
    notify: bool = True,
) -> Server:
    """Build an Aiki server (start it with `async with` or `start()`).

    Args:
        storage: A storage URL ("sqlite:///path/aiki.db", "sqlite://:memory:") or a `Storage`.
        max_payload_bytes: Largest payload or result accepted, in bytes of JSON (1 MiB).
        max_recovery_attempts: How often a run may lose its worker before it fails (10).
        clock: The clock for due times; tests pass `aiki.testing.FakeClock`.
        api_key: When set, the HTTP API (`Server.app`) requires `Authorization: Bearer <key>`
            on every endpoint but `/health`.
        queue: How servers sharing the storage tell each other of new work: None (claims
            from storage; on PostgreSQL with LISTEN/NOTIFY wake-ups), a Redis URL
            ("redis://host:6379/0?namespace=aiki"), or a `Queue`. Claims in storage decide
            who runs what in every case.
        notify: Whether servers on one PostgreSQL database wake each other with NOTIFY when
            no queue is given. Off, another server's work is found by looking at storage
            again, every `poll_interval_ms` of a waiting worker.

    Raises:
        ConfigError: the storage or queue URL names no known backend, or `api_key` is empty.
    """
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ConfigError("api_key must be a non-empty string (or None for no key)")
    clock = clock or SystemClock()
    url = storage if isinstance(storage, str) else "(custom)"
    settings = ServerSettings(
        storage=url,
        max_payload_bytes=max_payload_bytes,
        max_recovery_attempts=max_recovery_attempts,
    )
    backend = open_storage(storage, clock=clock) if isinstance(storage, str) else storage
    if queue is None or isinstance(queue, str):
        queue = open_queue(
            queue, storage_url=storage if isinstance(storage, str) else None, notify=notify
        )
    return Server(backend, settings=settings, clock=clock, api_key=api_key, queue=queue)
