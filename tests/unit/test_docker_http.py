"""The SDK client's lighter transport (engine/docker_http.py), against a scripted engine on a Unix
socket: the requests it writes, answers and errors read as the SDK reads them, kept-alive
connections reused and dropped ones replaced, the attach stream's frames."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors
import pytest

from dockworker.engine.adapter import DockerEngine
from dockworker.engine.docker_http import Endpoint, LeanApiClient, _query
from dockworker.errors import ContainerGone, ImageMissing

pytestmark = pytest.mark.timeout(20)

# What the scripted engine answers: (status line, headers, body), and whether to close after.
Answer = tuple[str, dict[str, str], bytes, bool]


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int


@dataclass
class ScriptedEngine:
    """Serves HTTP/1.1 on a Unix socket; ``answer`` decides each reply."""

    path: Path
    answer: Callable[[Seen], Answer | bytes]
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(16)
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.close()

    def drop_connections(self) -> None:
        """As an engine that restarted: every kept-alive connection is closed."""
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(sock)
            threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                request_line, *lines = head.decode().split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    buffer += sock.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                method, target, _ = request_line.split(" ")
                seen = Seen(method, target, headers, body, number)
                self.seen.append(seen)
                reply = self.answer(seen)
                if isinstance(reply, bytes):  # raw bytes, then the connection stays as it is
                    sock.sendall(reply)
                    continue
                status, extra, content, close = reply
                fields = {"Content-Type": "application/json", "Content-Length": str(len(content)), **extra}
                if close:
                    fields["Connection"] = "close"
                head_out = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
                sock.sendall(head_out.encode() + b"\r\n" + content)
                if close:
                    sock.close()
                    return


def _ok(body: bytes = b"{}") -> Answer:
    return ("200 OK", {}, body, False)


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Callable[[Callable[[Seen], Answer | bytes]], ScriptedEngine]]:
    made: list[ScriptedEngine] = []

    def make(answer: Callable[[Seen], Answer | bytes]) -> ScriptedEngine:
        engine = ScriptedEngine(tmp_path / f"engine-{len(made)}.sock", answer)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def _client(engine: ScriptedEngine) -> LeanApiClient:
    return LeanApiClient(f"unix://{engine.path}", version="1.41", timeout=5)


def test_the_query_is_written_as_requests_writes_it() -> None:
    assert _query({"v": True, "force": False, "link": None, "filters": ["a", "b"]}) == (
        "v=True&force=False&filters=a&filters=b"
    )
    assert _query(None) == ""


def test_calls_are_sent_on_one_kept_alive_connection(scripted: Callable[..., ScriptedEngine]) -> None:
    engine = scripted(lambda seen: _ok(b'{"State": {"Running": false}}'))
    client = _client(engine)
    try:
        assert client.inspect_container("abc")["State"] == {"Running": False}
        client.remove_container("abc", force=True, v=True)
        client.kill("abc")
    finally:
        client.close()
    assert [(s.method, s.target) for s in engine.seen] == [
        ("GET", "/v1.41/containers/abc/json"),
        ("DELETE", "/v1.41/containers/abc?v=True&link=False&force=True"),
        ("POST", "/v1.41/containers/abc/kill"),
    ]
    assert {s.connection for s in engine.seen} == {1}


def test_a_json_body_is_sent_as_the_sdk_sends_it(scripted: Callable[..., ScriptedEngine]) -> None:
    engine = scripted(lambda seen: ("201 Created", {}, b'{"Id": "c1", "Warnings": []}', False))
    client = _client(engine)
    try:
        created = client.create_container("img", ["true"], labels={"k": "v"}, network_disabled=True)
    finally:
        client.close()
    assert created["Id"] == "c1"
    (seen,) = engine.seen
    assert seen.target == "/v1.41/containers/create"
    assert seen.headers["content-type"] == "application/json"
    assert b'"NetworkDisabled": true' in seen.body
    assert b'"Labels": {"k": "v"}' in seen.body


def test_errors_are_the_sdks(scripted: Callable[..., ScriptedEngine]) -> None:
    def answer(seen: Seen) -> Answer:
        if "create" in seen.target:
            return ("404 Not Found", {}, b'{"message": "No such image: img:1"}', False)
        return ("404 Not Found", {}, b'{"message": "No such container: abc"}', False)

    client = _client(scripted(answer))
    try:
        with pytest.raises(docker.errors.ImageNotFound, match="No such image"):
            client.create_container("img:1", ["true"])
        with pytest.raises(docker.errors.NotFound, match="No such container") as caught:
            client.inspect_container("abc")
        assert not isinstance(caught.value, docker.errors.ImageNotFound)
    finally:
        client.close()


def test_a_connection_the_engine_closed_is_replaced(scripted: Callable[..., ScriptedEngine]) -> None:
    engine = scripted(lambda seen: _ok())
    client = _client(engine)
    try:
        client.inspect_container("a")
        engine.drop_connections()
        client.inspect_container("b")
        client.start("b")
    finally:
        client.close()
    assert [s.connection for s in engine.seen] == [1, 2, 2]


def test_an_answer_that_closes_is_not_kept(scripted: Callable[..., ScriptedEngine]) -> None:
    engine = scripted(lambda seen: ("200 OK", {}, b"{}", True))
    client = _client(engine)
    try:
        client.inspect_container("a")
        client.inspect_container("b")
    finally:
        client.close()
    assert [s.connection for s in engine.seen] == [1, 2]


def _frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def test_attach_reads_both_streams_in_order(scripted: Callable[..., ScriptedEngine]) -> None:
    big = b"x" * 200_000
    frames = _frame(1, b"out\n") + _frame(2, b"err\n") + _frame(1, big) + _frame(2, b"")
    head = b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
    head += b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    engine = scripted(lambda seen: head + frames[:3])  # the rest is written below

    client = _client(engine)
    try:
        stream = client.attach_stream("c1")
        (seen,) = engine.seen
        assert seen.target == "/v1.41/containers/c1/attach?stdout=1&stderr=1&stream=1"
        assert seen.headers["upgrade"] == "tcp"
        (served,) = engine._open
        served.sendall(frames[3:])
        served.shutdown(socket.SHUT_WR)
        assert b"".join(stream) == b"out\nerr\n" + big
    finally:
        client.close()


def test_attach_to_a_missing_container_is_container_gone(scripted: Callable[..., ScriptedEngine]) -> None:
    engine = scripted(lambda seen: ("404 Not Found", {}, b'{"message": "No such container: c9"}', False))
    adapter = DockerEngine.__new__(DockerEngine)
    adapter._init_state()
    adapter._api = _client(engine)
    try:
        with pytest.raises(ContainerGone, match="No such container"):
            adapter.attach("c9")
    finally:
        adapter._api.close()


def test_image_missing_through_the_adapter(scripted: Callable[..., ScriptedEngine]) -> None:
    from dockworker.engine import ContainerSpec

    engine = scripted(lambda seen: ("404 Not Found", {}, b'{"message": "No such image: nope:1"}', False))
    adapter = DockerEngine.__new__(DockerEngine)
    adapter._init_state()
    adapter._api = _client(engine)
    try:
        with pytest.raises(ImageMissing):
            adapter.create(ContainerSpec(image="nope:1", command=["true"]))
    finally:
        adapter._api.close()


@pytest.mark.parametrize(
    ("base_url", "unix_path", "address"),
    [
        ("http+unix:///var/run/docker.sock", "/var/run/docker.sock", None),  # the SDK's default
        ("unix:///run/d.sock", "/run/d.sock", None),
        ("/run/d.sock", "/run/d.sock", None),
        ("tcp://127.0.0.1:2375", None, ("127.0.0.1", 2375)),
    ],
)
def test_where_the_engine_listens(base_url: str, unix_path: str | None, address: object) -> None:
    assert Endpoint.supported(base_url)
    endpoint = Endpoint(base_url)
    assert endpoint.unix_path == unix_path
    if address is not None:
        assert (endpoint.host, endpoint.port) == address


def test_the_adapter_uses_the_lighter_client_on_the_default_socket() -> None:
    import docker.constants

    assert Endpoint.supported(docker.constants.DEFAULT_UNIX_SOCKET)
    assert not Endpoint.supported("https://engine.example:2376")
