"""A minimal HTTP/1.1 client connection for the engine's API: one request, one answer, on a
kept-alive socket.

``http.client`` parses every answer's header block with the ``email`` package's feed parser:
about a third of the CPU of a small call to the engine (a profile of the runner under load put
``parse_headers`` at 18 % of the process's busy time). The engine's answers need much less: a
status line, ``Name: value`` lines, and a body framed by ``Content-Length``, ``chunked`` transfer
encoding, or the connection's end. Errors are the ones ``http.client`` raised, so the adapter
classifies them the same way: ``RemoteDisconnected`` when the engine closed the connection
before answering, ``IncompleteRead`` for a body cut short, ``HTTPException`` for a malformed
answer, ``OSError`` (and ``TimeoutError``) from the socket."""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass

READ_SIZE = 64 * 1024
HEAD_LIMIT = 64 * 1024
# A chunk-size line is a few hex digits and maybe extensions; anything longer is not HTTP.
CHUNK_LINE_LIMIT = 4096
_NO_BODY = frozenset({204, 304})


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    # False when the engine closes the connection after this answer (or said it would).
    keep_alive: bool


@dataclass(frozen=True)
class Head:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    version: str

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


def parse_head(head: bytes) -> Head:
    """The status line and header fields of an answer (without the blank line ending them)."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise http.client.BadStatusLine(status_line)
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise http.client.HTTPException(f"malformed header line: {line[:100]!r}")
        headers.append((name.strip(), value.strip()))
    return Head(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, parts[0])


class Connection:
    """One socket to the engine, used by one thread at a time. ``request`` sends a request and
    returns the whole answer; bytes read past it (none, from a well-behaved engine) are kept
    for the next one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def request(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> Answer:
        lines = [f"{method} {target} HTTP/1.1\r\nHost: docker\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        if body is not None or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body or b'')}\r\n")
        lines.append("\r\n")
        self.sock.sendall("".join(lines).encode("latin-1") + (body or b""))
        return self.read_answer(method)

    def read_answer(self, method: str = "GET") -> Answer:
        return self.read_body(self.read_head(), method)

    def read_body(self, head: Head, method: str = "GET") -> Answer:
        """The answer whose head was read: its body, framed as the head says."""
        keep_alive = _keeps_alive(head)
        if method == "HEAD" or head.status in _NO_BODY or 100 <= head.status < 200:
            body = b""
        elif (head.header("Transfer-Encoding") or "").lower().endswith("chunked"):
            body = self._read_chunked()
        elif (length := head.header("Content-Length")) is not None:
            try:
                size = int(length)
            except ValueError:
                raise http.client.HTTPException(f"bad Content-Length: {length[:40]!r}") from None
            body = self._read_exactly(size)
        else:
            body = self._read_to_end()
            keep_alive = False
        return Answer(head.status, head.reason, head.headers, body, keep_alive)

    def read_head(self) -> Head:
        """The next answer's head; what follows it stays buffered (see :meth:`take_buffered`)."""
        if not self._buffer and not self._receive():
            raise http.client.RemoteDisconnected("the engine closed the connection without an answer")
        end = self._until(b"\r\n\r\n", HEAD_LIMIT, "the engine's answer has too long a head")
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        return parse_head(head)

    def take_buffered(self) -> bytes:
        taken = bytes(self._buffer)
        self._buffer.clear()
        return taken

    def _receive(self) -> bool:
        chunk = self.sock.recv(READ_SIZE)
        self._buffer += chunk
        return bool(chunk)

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._receive():
                raise http.client.IncompleteRead(bytes(self._buffer), size - len(self._buffer))
        body = bytes(self._buffer[:size])
        del self._buffer[:size]
        return body

    def _read_line(self) -> bytes:
        end = self._until(b"\r\n", CHUNK_LINE_LIMIT, "malformed chunked answer")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _until(self, marker: bytes, limit: int, too_long: str) -> int:
        """Receive until the buffer holds ``marker``; where it starts."""
        end = self._buffer.find(marker)
        while end < 0:
            if len(self._buffer) > limit:
                raise http.client.HTTPException(too_long)
            if not self._receive():
                raise http.client.IncompleteRead(bytes(self._buffer))
            end = self._buffer.find(marker)
        return end

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_text = self._read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise http.client.HTTPException(f"bad chunk size: {size_text[:40]!r}") from None
            if size == 0:
                while self._read_line():  # trailer fields, up to the blank line
                    pass
                return b"".join(parts)
            parts.append(self._read_exactly(size))
            if self._read_exactly(2) != b"\r\n":
                raise http.client.HTTPException("malformed chunked answer")

    def _read_to_end(self) -> bytes:
        while self._receive():
            pass
        body = bytes(self._buffer)
        self._buffer.clear()
        return body


def _keeps_alive(head: Head) -> bool:
    tokens = {t.strip().lower() for t in (head.header("Connection") or "").split(",")}
    if "close" in tokens:
        return False
    return head.version != "HTTP/1.0" or "keep-alive" in tokens
