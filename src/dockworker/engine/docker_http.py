"""The Docker SDK's low-level client with a lighter transport for its plain calls.

A call through the SDK goes through requests and urllib3 (sessions, hooks, proxy lookups in the
environment, adapters, a pool): about 1.4 ms of CPU for an ``inspect``, against 0.3 ms for the
same request written with ``http.client`` on a kept-alive connection, and less again with our
own HTTP/1.1 framing (``http1.py``: no header parsing by the ``email`` package). A task makes half a dozen
such calls, and the CPU is what limits throughput on a small host. :class:`LeanApiClient` keeps
every SDK method (and so the SDK's URLs, bodies and errors) and sends their request-response
calls itself; streamed calls (attach, logs, build, image export) keep the SDK's path. Its
:meth:`LeanApiClient.attach_stream` reads a container's output from a hijacked connection of its
own, as the SDK's attach does, without the SDK's per-read overhead."""

from __future__ import annotations

import http.client
import select
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import docker
import docker.errors
import requests
import requests.structures

from . import http1

# A connection kept idle longer than the engine keeps it is found closed before reuse (see
# _Connections.take); past this many idle ones per client the others are closed.
MAX_IDLE = 16
FRAME_HEADER = struct.Struct(">BxxxL")
READ_SIZE = 64 * 1024


class Endpoint:
    """Where the engine listens: a Unix socket, or a plain TCP address."""

    def __init__(self, base_url: str) -> None:
        self.unix_path: str | None = None
        self.host, self.port = "localhost", 80
        if base_url.startswith(("unix://", "http+unix://")):
            self.unix_path = base_url.split("://", 1)[1]
        elif base_url.startswith("/"):
            self.unix_path = base_url
        else:
            parsed = urllib.parse.urlsplit(base_url.replace("tcp://", "http://", 1))
            self.host, self.port = parsed.hostname or "localhost", parsed.port or 2375

    @staticmethod
    def supported(base_url: str) -> bool:
        return base_url.startswith(("unix://", "http+unix://", "/", "tcp://", "http://"))

    def connection(self, timeout: float | None) -> http1.Connection:
        return http1.Connection(self.socket(timeout))

    def socket(self, timeout: float | None) -> socket.socket:
        if self.unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self.unix_path)
            except BaseException:
                sock.close()
                raise
            return sock
        return socket.create_connection((self.host, self.port), timeout=timeout)


class _Connections:
    """Idle kept-alive connections, each used by one thread at a time."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._idle: list[http1.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self, timeout: float | None) -> tuple[http1.Connection, bool]:
        """A connection, and whether it was used before."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._endpoint.connection(timeout), False
            sock = connection.sock
            # Readable while idle means closed by the engine (or garbage): not reusable.
            if not select.select([sock], [], [], 0)[0]:
                sock.settimeout(timeout)
                return connection, True
            connection.close()

    def give_back(self, connection: http1.Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close the idle connections; those in use are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _query(params: Any) -> str:
    """The query string as requests writes it: None values left out, sequences repeated."""
    if not params:
        return ""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items() if isinstance(params, Mapping) else params:
        values = value if isinstance(value, list | tuple) else [value]
        pairs += [(key, v if isinstance(v, str) else str(v)) for v in values if v is not None]
    return urllib.parse.urlencode(pairs)


class LeanApiClient(docker.APIClient):
    """``docker.APIClient`` whose non-streamed requests go through :mod:`.http1` on kept-alive
    connections. Thread-safe as the SDK's client is (each call takes a connection of its own)."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(base_url=base_url, **kwargs)
        self._endpoint = Endpoint(base_url)
        self._connections = _Connections(self._endpoint)
        self._prefix_length = len(self.base_url)

    def close(self) -> None:
        self._connections.close()
        super().close()

    def request(  # type: ignore[override]
        self,
        method: str | bytes,
        url: str | bytes,
        params: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: Any = None,
        stream: bool | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        # requests' get/post/delete add these with their defaults: they change nothing here.
        others = {k: v for k, v in kwargs.items() if v is not None and k != "allow_redirects"}
        lean = (
            not stream
            and not others
            and isinstance(method, str)
            and isinstance(url, str)
            and url.startswith(self.base_url)
            and (data is None or isinstance(data, str | bytes))
            and (timeout is None or isinstance(timeout, int | float))
        )
        if not lean:
            return super().request(
                method, url, params, data, headers, timeout=timeout, stream=stream, **kwargs
            )
        assert isinstance(method, str) and isinstance(url, str)
        path = url[self._prefix_length :]
        query = _query(params)
        if query:
            path = f"{path}?{query}"
        body = data.encode() if isinstance(data, str) else data
        return self._send(method, url, path, body, dict(headers or {}), timeout)

    def _send(
        self,
        method: str,
        url: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float | None,
    ) -> requests.Response:
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        while True:
            connection, reused = self._connections.take(timeout)
            try:
                answer = connection.request(method, path, headers, body)
            except ConnectionError:  # RemoteDisconnected included
                connection.close()
                # Closed by the engine just as it was taken: only a read is safe to send again.
                if reused and method == "GET":
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            break
        if answer.keep_alive:
            self._connections.give_back(connection)
        else:
            connection.close()
        response = requests.Response()
        response.status_code = answer.status
        response.reason = answer.reason
        response.url = url
        response.headers = requests.structures.CaseInsensitiveDict(answer.headers)
        response._content = answer.body
        response.encoding = "utf-8"
        return response

    def attach_stream(self, container_id: str, timeout: float | None = None) -> Iterable[bytes]:
        """The container's stdout and stderr (no TTY: multiplexed frames), from its start, until
        it exits: what the SDK's ``attach(stdout, stderr, stream=True)`` gives. The connection is
        made before this returns (call it before ``start``). Without ``logs``: dockerd would
        replay the log file after hooking the live stream, and output written in between (a
        busy host) came twice."""
        quoted = urllib.parse.quote(container_id, safe="")
        path = f"/v{self.api_version}/containers/{quoted}/attach?stdout=1&stderr=1&stream=1"
        request = (
            f"POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        sock = self._endpoint.socket(timeout)
        try:
            sock.sendall(request)
            rest = self._upgraded(sock, path)
            sock.settimeout(None)  # the stream stays open for the whole task
        except BaseException:
            sock.close()
            raise
        return _FrameStream(sock, rest)

    def _upgraded(self, sock: socket.socket, path: str) -> bytes:
        """Read the answer's head; returns what followed it. Raises the SDK's error for a
        refusal (404: no such container...)."""
        connection = http1.Connection(sock)
        head = connection.read_head()
        if head.status in (101, 200):
            return connection.take_buffered()
        answer = connection.read_body(head, "POST")
        response = requests.Response()
        response.status_code = answer.status
        response.reason = answer.reason
        response.url = f"{self.base_url}{path}"
        response._content = answer.body
        response.encoding = "utf-8"
        try:
            response.raise_for_status()
        except requests.HTTPError as exc:
            docker.errors.create_api_error_from_http_exception(exc)
        raise http.client.HTTPException(f"unexpected answer to attach: HTTP {head.status} {head.reason}")


class _FrameStream:
    """The payloads of the engine's multiplexed stream (8-byte header: stream, size), in order,
    both streams. Its socket is closed when the iteration ends, by :meth:`close`, or when it is
    dropped unread."""

    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self._sock = sock
        self._pending = pending

    def __iter__(self) -> Iterator[bytes]:
        buffer = bytearray(self._pending)
        try:
            while True:
                while len(buffer) >= FRAME_HEADER.size:
                    _stream, size = FRAME_HEADER.unpack_from(buffer)
                    end = FRAME_HEADER.size + size
                    if len(buffer) < end:
                        break
                    payload = bytes(buffer[FRAME_HEADER.size : end])
                    del buffer[:end]
                    if payload:
                        yield payload
                chunk = self._sock.recv(READ_SIZE)
                if not chunk:
                    return
                buffer += chunk
        finally:
            self.close()

    def close(self) -> None:
        self._sock.close()

    def __del__(self) -> None:
        self._sock.close()
