"""The API's listening socket: connections accepted on it send small answers at once."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from dockworker.service import bind_api_socket
from dockworker.settings import load_settings


async def _nodelay_of_accepted(listener: socket.socket) -> int:
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_connect(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=listener)
    async with server:
        port = listener.getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(accepted, 5)
        finally:
            writer.close()


@pytest.mark.timeout(10)
def test_accepted_connections_have_nagle_off(tmp_path: Path) -> None:
    """Without TCP_NODELAY an answer written in two parts (head, then body) waits for the
    client's delayed ACK: about 40 ms per request on Linux."""
    listener = bind_api_socket(load_settings(env={}, data_dir=tmp_path, port=0))
    try:
        assert asyncio.run(_nodelay_of_accepted(listener)) != 0
    finally:
        listener.close()
