"""`listen()`: the socket `aiki server` and `aiki dev` serve HTTP on."""

from __future__ import annotations

import asyncio
import socket

from aiki.cli._http import listen


async def test_accepted_connections_have_nagle_off() -> None:
    # uvicorn writes a reply's head and body separately; with Nagle on, the body waits for
    # the client's delayed ACK. asyncio turns Nagle off on the connections it accepts only
    # when the listening socket says it is TCP.
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn: socket.socket = writer.get_extra_info("socket")
        accepted.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    with listen("127.0.0.1", 0) as sock:
        server = await asyncio.start_server(on_connection, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            try:
                assert await accepted != 0
            finally:
                writer.close()
