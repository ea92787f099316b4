"""The listening socket serve and watch's health endpoint share (``health.listen``)."""

from __future__ import annotations

import asyncio
import socket

from statusmail.web.health import listen


async def test_accepted_connections_send_at_once() -> None:
    """asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets whose protocol
    says TCP; without it every response on a kept-alive connection (behind nginx, every
    one) waited about 40 ms for the client's delayed ACK."""
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, sock=listen("127.0.0.1", 0))
    async with server:
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await asyncio.wait_for(accepted, 10) != 0
        finally:
            writer.close()
            await writer.wait_closed()
