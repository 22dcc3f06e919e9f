"""`PostgresNotifyQueue`: servers sharing a PostgreSQL database announce news by NOTIFY.

One connection per server, apart from the storage pool: it LISTENs, and sends this server's
NOTIFYs, each its own short transaction carrying everything announced since the last one (so
many enqueues cost one NOTIFY, and NOTIFY's commit-time lock is taken rarely). Each NOTIFY
also counts the servers' listening connections, known by their application name: a server
that finds itself alone sends nothing for a while (see `aiki.queue._broadcast`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from aiki.queue._broadcast import Broadcast

CHANNEL = "aiki_events"
APPLICATION_NAME = "aiki-notify"
# pg_stat_activity shows every session's database and application name to any role.
_NOTIFY = """
SELECT pg_notify($1, $2), (
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = $3
)
"""
_CONNECT_TIMEOUT_S = 5.0
# A silent connection may be dead (server restarted, backend terminated, network cut); a
# query this often notices it.
_KEEPALIVE_S = 5.0


class PostgresNotifyQueue(Broadcast):
    """Announcements by LISTEN/NOTIFY on the storage's own database."""

    def __init__(self, dsn: str, *, description: str) -> None:
        super().__init__(description)
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one query at a time on the connection

    async def _publish(self, message: str) -> int | None:
        conn = self._conn
        if conn is None or conn.is_closed():
            raise ConnectionError("not connected to PostgreSQL")
        async with self._lock:
            row = await conn.fetchrow(
                _NOTIFY, CHANNEL, message, APPLICATION_NAME, timeout=_KEEPALIVE_S
            )
        assert row is not None
        listeners: int = row[1]
        return listeners

    async def _listen(
        self, on_message: Callable[[str], None], connected: Callable[[], None]
    ) -> None:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=_CONNECT_TIMEOUT_S,
            server_settings={"application_name": APPLICATION_NAME},
        )
        lost = asyncio.get_running_loop().create_future()

        def on_termination(_: object) -> None:
            if not lost.done():
                lost.set_result(None)

        def on_notification(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            on_message(str(payload))

        conn.add_termination_listener(on_termination)
        try:
            await conn.add_listener(CHANNEL, on_notification)
            self._conn = conn
            connected()
            while not lost.done():
                await asyncio.wait([lost], timeout=_KEEPALIVE_S)
                if not lost.done():
                    async with self._lock:
                        await conn.execute("SELECT 1", timeout=_KEEPALIVE_S)
        finally:
            self._conn = None
            conn.terminate()

    async def _close_connections(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
