"""The remote runner's HTTP client: kept-alive connections to the API servers (several
addresses: the next one is tried when one cannot be reached), JSON in and out, and the
answers turned into dockworker's error families once, here.

* the server unreachable, or answering 5xx: :class:`ApiUnreachable` (infrastructure, retryable);
* 401: :class:`TokenRefused` (the cluster token was revoked or rotated: nothing will work);
* 409 from a session check: :class:`SessionLost`; other 4xx: the ClientError of that status."""

from __future__ import annotations

import http.client
import json
import queue
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from .. import __version__
from ..errors import ClientError, Conflict, InfrastructureError, NotFound

POOL_SIZE = 16
# uvicorn closes a connection idle for 5 s: one idle for longer than this is not reused.
KEEP_IDLE_S = 3.0
# What a kept-alive connection that the server closed meanwhile raises: try a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
CONNECT_TIMEOUT_S = 5.0


_Idle = tuple[int, float, http.client.HTTPConnection]


class ApiUnreachable(InfrastructureError):
    """The API servers cannot be reached, or failed to answer."""


class TokenRefused(ClientError):
    """The API refused the cluster token (revoked, rotated, or never valid)."""

    status_code = 401


class SessionLost(Conflict):
    """This runner's session ended or was taken over by another process."""


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url.strip().rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"{url!r} is not an http:// or https:// URL of the dockworker API")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.prefix}"

    def connect(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=CONNECT_TIMEOUT_S, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT_S)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ApiClient:
    """Thread-safe: each call borrows a kept-alive connection from a small pool."""

    def __init__(self, urls: Sequence[str], token: str) -> None:
        if not urls:
            raise ClientError("give the API's address: --api URL (or DOCKWORKER_API)")
        self.endpoints = [Endpoint.parse(url) for url in urls]
        self._current = 0
        self._lock = threading.Lock()
        # (address index, idle since, connection), the most recently used first
        self._idle: queue.LifoQueue[_Idle] = queue.LifoQueue(POOL_SIZE)
        self._headers = {
            "Authorization": f"OAuth {token}",
            "Accept": "application/json",
            "User-Agent": f"dockworker-runner/{__version__}",
        }
        self.session_headers: dict[str, str] = {}

    def close(self) -> None:
        while True:
            try:
                _, _, connection = self._idle.get_nowait()
            except queue.Empty:
                return
            connection.close()

    def _borrow(self) -> tuple[int, http.client.HTTPConnection]:
        with self._lock:
            current = self._current
        while True:
            try:
                index, idle_since, connection = self._idle.get_nowait()
            except queue.Empty:
                return current, self.endpoints[current].connect()
            if index == current and time.monotonic() - idle_since < KEEP_IDLE_S:
                return index, connection
            # made for an address this client moved away from, or idle for so long that the
            # server may be closing it
            connection.close()

    def _fresh(self) -> tuple[int, http.client.HTTPConnection]:
        with self._lock:
            current = self._current
        return current, self.endpoints[current].connect()

    def _give_back(self, index: int, connection: http.client.HTTPConnection) -> None:
        try:
            self._idle.put_nowait((index, time.monotonic(), connection))
        except queue.Full:
            connection.close()

    def _failed_over(self, index: int) -> None:
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self.endpoints)

    def call(
        self,
        method: str,
        path: str,
        *,
        payload: Any = None,
        body: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
        once: bool = False,
    ) -> Reply:
        """One request, tried once on each address before giving up (a kept-alive connection
        the server closed meanwhile is retried on a new one first). ``once``: never sent twice,
        for a request that must not be repeated blindly (a claim)."""
        headers = {**self._headers, **self.session_headers}
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/octet-stream"
        query = f"?{urlencode(params)}" if params else ""
        last_error: Exception | None = None
        fresh = once  # a request sent once goes on a new connection: never one the server closed
        for _ in range(1 if once else len(self.endpoints) + 1):
            index, connection = self._fresh() if fresh else self._borrow()
            endpoint = self.endpoints[index]
            try:
                connection.timeout = timeout
                if connection.sock is not None:
                    connection.sock.settimeout(timeout)
                connection.request(method, f"{endpoint.prefix}{path}{query}", body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                last_error = exc
                if isinstance(exc, _STALE) and not fresh:
                    fresh = True  # the next try on a new connection, to the same address
                else:
                    self._failed_over(index)
                continue
            if response.will_close:
                connection.close()
            else:
                self._give_back(index, connection)
            return self._checked(Reply(response.status, data), endpoint)
        where = ", ".join(str(e) for e in self.endpoints)
        raise ApiUnreachable(f"cannot reach the dockworker API at {where}: {last_error}")

    @staticmethod
    def _checked(reply: Reply, endpoint: Endpoint) -> Reply:
        if reply.status < 400:
            return reply
        try:
            message = str(reply.json().get("msg", ""))
        except (ValueError, AttributeError):
            message = reply.body[:200].decode(errors="replace")
        if reply.status >= 500:
            raise ApiUnreachable(f"the API at {endpoint} answered {reply.status}: {message}")
        if reply.status == 401:
            raise TokenRefused(message or "the API refused the cluster token")
        if reply.status == 404:
            raise NotFound(message)
        if reply.status == 409 and "session" in message.lower():
            raise SessionLost(message)
        if reply.status == 409:
            raise Conflict(message)
        raise ClientError(f"{message} (HTTP {reply.status})")
