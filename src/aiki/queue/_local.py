"""The queue of a server that shares its storage with no other server."""

from __future__ import annotations

from aiki.queue._protocol import Announcement, Deliver


class LocalQueue:
    """Tells nobody: the server's own long-polls are woken in process."""

    description = "storage claims"

    async def open(self, deliver: Deliver) -> None:
        pass

    def announce(self, news: Announcement) -> None:
        pass

    async def close(self) -> None:
        pass
