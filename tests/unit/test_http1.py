"""The engine client's HTTP/1.1 framing (engine/http1.py), on a socket pair: what it writes, and
every way an answer's body is framed, also when the bytes arrive a few at a time."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Iterator

import pytest

from dockworker.engine.http1 import Connection, parse_head

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def pair() -> Iterator[tuple[Connection, socket.socket]]:
    ours, engine = socket.socketpair()
    ours.settimeout(5)
    engine.settimeout(5)
    yield Connection(ours), engine
    ours.close()
    engine.close()


def _answer_with(
    engine: socket.socket, raw: bytes, *, piece: int = 0, close: bool = False
) -> threading.Thread:
    """Reads the request, then sends ``raw`` (in pieces of ``piece`` bytes if given)."""

    def serve() -> None:
        request = b""
        with contextlib.suppress(OSError):  # the test may close the pair first
            while b"\r\n\r\n" not in request:
                request += engine.recv(65536)
            pieces = [raw[i : i + piece] for i in range(0, len(raw), piece)] if piece else [raw]
            for part in pieces:
                engine.sendall(part)
            if close:
                engine.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_the_request_is_written_with_its_length(pair: tuple[Connection, socket.socket]) -> None:
    connection, engine = pair
    _answer_with(engine, b"HTTP/1.1 204 No Content\r\n\r\n")
    connection.request("POST", "/v1.41/containers/x/start", {"X-Test": "1"}, None)
    # the server side already consumed the request: send another to capture it
    got: list[bytes] = []

    def capture() -> None:
        data = b""
        while not data.endswith(b"{}"):
            data += engine.recv(65536)
        got.append(data)
        engine.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    answer = connection.request(
        "POST", "/v1.41/containers/create", {"Content-Type": "application/json"}, b"{}"
    )
    thread.join(5)
    assert got[0] == (
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    assert (answer.status, answer.body, answer.keep_alive) == (200, b"ok", True)


@pytest.mark.parametrize("piece", [0, 1, 7])
def test_a_body_framed_by_its_length(pair: tuple[Connection, socket.socket], piece: int) -> None:
    connection, engine = pair
    body = b'{"Id": "abc"}'
    raw = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n" + body
    _answer_with(engine, raw + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", piece=piece)
    answer = connection.request("GET", "/x", {}, None)
    assert (answer.status, answer.reason, answer.body) == (201, "Created", body)
    assert ("Content-Type", "application/json") in answer.headers
    # the next answer, already sent, is read from what was buffered
    assert connection.read_answer().status == 200


@pytest.mark.parametrize("piece", [0, 1, 5])
def test_a_chunked_body(pair: tuple[Connection, socket.socket], piece: int) -> None:
    connection, engine = pair
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'10\r\n{"StatusCode": 0\r\n1;ext=1\r\n}\r\n0\r\nX-Trailer: y\r\n\r\n'
    )
    _answer_with(engine, raw, piece=piece)
    answer = connection.request("POST", "/wait", {}, None)
    assert answer.body == b'{"StatusCode": 0}'
    assert answer.keep_alive


def test_a_body_to_the_connections_end(pair: tuple[Connection, socket.socket]) -> None:
    connection, engine = pair
    _answer_with(engine, b"HTTP/1.0 200 OK\r\n\r\nall of it", close=True)
    answer = connection.request("GET", "/x", {}, None)
    assert (answer.body, answer.keep_alive) == (b"all of it", False)


def test_connection_close_is_not_kept(pair: tuple[Connection, socket.socket]) -> None:
    connection, engine = pair
    _answer_with(engine, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert connection.request("GET", "/x", {}, None).keep_alive is False


def test_no_body_for_204_and_304(pair: tuple[Connection, socket.socket]) -> None:
    connection, engine = pair
    _answer_with(engine, b"HTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert connection.request("POST", "/start", {}, None).status == 304
    assert connection.read_answer().body == b""


def test_closed_before_answering_is_remote_disconnected(pair: tuple[Connection, socket.socket]) -> None:
    connection, engine = pair
    _answer_with(engine, b"", close=True)
    with pytest.raises(http.client.RemoteDisconnected):
        connection.request("GET", "/x", {}, None)


def test_a_body_cut_short_is_an_incomplete_read(pair: tuple[Connection, socket.socket]) -> None:
    connection, engine = pair
    _answer_with(engine, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True)
    with pytest.raises(http.client.IncompleteRead):
        connection.request("GET", "/x", {}, None)


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_answers_are_http_exceptions(pair: tuple[Connection, socket.socket], raw: bytes) -> None:
    connection, engine = pair
    _answer_with(engine, raw, close=True)
    with pytest.raises(http.client.HTTPException):
        connection.request("GET", "/x", {}, None)


def test_an_endless_head_is_refused(pair: tuple[Connection, socket.socket]) -> None:
    connection, engine = pair
    _answer_with(engine, b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000)
    with pytest.raises(http.client.HTTPException, match="too long"):
        connection.request("GET", "/x", {}, None)


def test_parse_head_finds_headers_whatever_their_case() -> None:
    head = parse_head(b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\nApi-Version: 1.41")
    assert (head.status, head.reason, head.version) == (404, "Not Found", "HTTP/1.1")
    assert head.header("Content-Length") == "3"
    assert head.header("api-version") == "1.41"
    assert head.header("Missing") is None
