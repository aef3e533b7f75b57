"""Checks made before anything parses a request: the header's size (in the HTTP server), the
body's size, NUL characters in the URL."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

# After refusing a request, the server reads (and drops) what the client still sends for this
# long before closing: closing with unread data would reset the connection, and the client would
# see ECONNRESET instead of the answer.
LINGER_S = 2.0


class RefusingH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, but a request it cannot parse gets a JSON answer with h11's
    status (431 for a request line and header beyond h11's limit, 16 KiB by default; 400
    otherwise), and the connection lingers so that the client reads it. uvicorn answers 400 in
    plain text and closes at once, which resets a connection still sending a large header."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        # Called while handling h11's RemoteProtocolError, which carries the status to answer.
        error = sys.exception()
        status = error.error_status_hint if isinstance(error, h11.RemoteProtocolError) else 400
        text = "Request header fields too large" if status == 431 else f"Invalid HTTP request: {error or msg}"
        body = json.dumps({"msg": text}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        events = (h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage())
        for event in events:
            self.transport.write(self.conn.send(event) or b"")
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuses bodies above the limit with 413: at once from Content-Length, or while
    streaming when the client sends more than it announced (or announced nothing)."""

    def __init__(self, app: ASGIApp, *, default_limit: int, upload_limit: int) -> None:
        self.app = app
        self.default_limit = default_limit
        self.upload_limit = upload_limit

    def _limit_for(self, scope: Scope) -> int:
        path: str = scope.get("path", "")
        return self.upload_limit if path.rstrip("/").endswith("/codes") else self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        await answer(send, 413, f"Request body too large: the limit is {limit} bytes")


class RefuseNulInUrl:
    """Refuses URLs with a NUL character (``%00``) in the path or the query with 400: no name or
    id holds one, and PostgreSQL could not even compare them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope.get("path", "")
            query: bytes = scope.get("query_string", b"")
            if "\x00" in path or b"\x00" in query or b"%00" in query:
                await answer(send, 400, "NUL characters are not allowed in the URL")
                return
        await self.app(scope, receive, send)


async def answer(send: Send, status: int, msg: str) -> None:
    """Send a whole JSON error answer."""
    body = json.dumps({"msg": msg}).encode()
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
