"""`RedisQueue`: servers announce news to each other through Redis pub/sub.

Redis carries wake-ups only; which worker gets a run is still decided by the claim in
storage. A lost message (Redis restarted, a subscriber reconnecting) delays pickup until the
long-poll's next look at storage; a duplicated or stale one costs an empty claim.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as redis

from aiki.queue._broadcast import Broadcast
from aiki.queue._keys import events_channel

# Short timeouts: while Redis is unreachable each try should fail fast, not hold up news.
_CONNECT_TIMEOUT_S = 1.0
_COMMAND_TIMEOUT_S = 2.0
# A subscriber waits this long for a message before checking that it is still connected.
_LISTEN_TIMEOUT_S = 1.0
_HEALTH_CHECK_S = 5


class RedisQueue(Broadcast):
    """Announcements through one pub/sub channel of a Redis server."""

    def __init__(self, url: str, *, namespace: str, description: str) -> None:
        super().__init__(description)
        self._channel = events_channel(namespace)
        self._redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
            health_check_interval=_HEALTH_CHECK_S,
            decode_responses=True,
        )

    async def _publish(self, message: str) -> int | None:
        listeners: int = await self._redis.publish(self._channel, message)
        return listeners

    async def _listen(
        self, on_message: Callable[[str], None], connected: Callable[[], None]
    ) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            connected()
            while True:
                message = await pubsub.get_message(timeout=_LISTEN_TIMEOUT_S)
                if message is not None and message.get("type") == "message":
                    on_message(message["data"])
        finally:
            await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]

    async def _close_connections(self) -> None:
        await self._redis.aclose()
