"""The queue of a server that shares its storage with no other server."""

from __future__ import annotations

from aiki.queue._protocol import Announcement, Deliver


class LocalQueue:
    """Tells nobody: the server's own long-polls are woken in process.

    `alone`: no other server shares the storage (SQLite), so every end is this server's own.
    Otherwise (PostgreSQL with NOTIFY off, a storage given as an object) others may.
    """

    description = "storage claims"

    def __init__(self, *, alone: bool = False) -> None:
        self.hears_every_end = alone

    async def open(self, deliver: Deliver) -> None:
        pass

    def announce(self, news: Announcement) -> None:
        pass

    async def close(self) -> None:
        pass
