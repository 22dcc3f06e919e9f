"""`Server` and `aiki.server()`: storage, the service layer and the timer runtime together."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from aiki._core.clock import Clock, SystemClock
from aiki._core.serde import DEFAULT_MAX_PAYLOAD_BYTES
from aiki.config import DEFAULT_MAX_RECOVERY_ATTEMPTS, DEFAULT_STORAGE_URL, ServerSettings
from aiki.server._service import Service
from aiki.server._timers import TimerLoop
from aiki.storage import Storage, open_storage


class Server:
    """An Aiki server: use it as `async with aiki.server(...) as srv:`.

    Starting opens storage (applying migrations) and the timer runtime; stopping ends both.
    """

    def __init__(self, storage: Storage, *, settings: ServerSettings, clock: Clock) -> None:
        self.settings = settings
        self.storage = storage
        self.clock = clock
        self._service = Service(storage, settings)
        self._timers: asyncio.Task[None] | None = None

    @property
    def service(self) -> Service:
        """The service layer, which an in-process client calls directly."""
        return self._service

    async def start(self) -> None:
        """Open storage and start the timer runtime."""
        if self._timers is not None:
            return
        await self.storage.open()
        self._timers = asyncio.create_task(
            TimerLoop(self._service, self.clock).run(), name="aiki timers"
        )

    async def stop(self) -> None:
        """Stop the runtime and close storage; queued writes are finished first."""
        timers, self._timers = self._timers, None
        if timers is None:
            return
        timers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timers
        await self._service.close()
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
) -> Server:
    """Build an Aiki server (start it with `async with` or `start()`).

    Args:
        storage: A storage URL ("sqlite:///path/aiki.db", "sqlite://:memory:") or a `Storage`.
        max_payload_bytes: Largest payload or result accepted, in bytes of JSON (1 MiB).
        max_recovery_attempts: How often a run may lose its worker before it fails (10).
        clock: The clock for due times; tests pass `aiki.testing.FakeClock`.

    Raises:
        ConfigError: the storage URL names no known backend.
    """
    clock = clock or SystemClock()
    url = storage if isinstance(storage, str) else "(custom)"
    settings = ServerSettings(
        storage=url,
        max_payload_bytes=max_payload_bytes,
        max_recovery_attempts=max_recovery_attempts,
    )
    backend = open_storage(storage, clock=clock) if isinstance(storage, str) else storage
    return Server(backend, settings=settings, clock=clock)
