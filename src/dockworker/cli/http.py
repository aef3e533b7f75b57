"""The one HTTP client of the CLI, for the project API and the admin API alike: a token, a base
URL, JSON answers checked for what dockworker sends, and errors turned into ClientError with
the server's ``msg`` (or a plain word on what answered instead).

Built on the standard library's http.client: a command starts in a few milliseconds where a
full-featured client took a third of a second to import and set up. HTTP(S)_PROXY and NO_PROXY
are honoured."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from .. import __version__
from ..errors import ClientError, DockworkerError

CHUNK = 65536


class ApiError(ClientError):
    """The server refused the request."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status_code})")
        self.status_code = status_code


class StreamCut(DockworkerError):
    """A streamed answer ended before the server finished it (connection lost, server stopped)."""


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


# A file for a multipart form: (file name or None, content, content type).
FormPart = tuple[str | None, bytes | str, str]


class Http:
    def __init__(self, base_url: str, token: str, *, prefix: str = "", timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"{base_url!r} is not an http:// or https:// URL")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/") + prefix
        self._headers = {
            "Authorization": f"OAuth {token}",
            "Accept": "application/json",
            "User-Agent": f"dockworker-cli/{__version__}",
        }
        self._timeout = timeout

    def close(self) -> None:
        """Nothing to close: each request has its own connection."""

    # --- requests ---

    def _connection(self, timeout: float | None) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to the server or to the proxy in between, and whether it is a plain
        HTTP proxy (which wants the whole URL in the request line)."""
        proxy = _proxy_for(self._scheme, self._host)
        host, port = proxy or (self._host, self._port)
        if self._scheme == "https":
            import ssl

            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=ssl.create_default_context()
            )
            if proxy:
                connection.set_tunnel(self._host, self._port)
            return connection, False
        return http.client.HTTPConnection(host, port, timeout=timeout), proxy is not None

    def _target(self, path: str, params: Mapping[str, Any] | None, absolute: bool) -> str:
        query = f"?{urlencode(params)}" if params else ""
        target = f"{self._prefix}{path}{query}"
        return f"{self._scheme}://{self._host}:{self._port}{target}" if absolute else target

    def _open(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        files: Mapping[str, FormPart] | None = None,
        timeout: float | None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        headers = dict(self._headers)
        body: bytes | None = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif files is not None:
            body, headers["Content-Type"] = _multipart(files)
        connection, absolute = self._connection(timeout)
        try:
            connection.request(method, self._target(path, params, absolute), body=body, headers=headers)
            return connection, connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise ClientError(f"cannot reach the dockworker API at {self.base_url}: {_reason(exc)}") from exc

    def _send(self, method: str, path: str, **kwargs: Any) -> Answer:
        connection, response = self._open(method, path, timeout=self._timeout, **kwargs)
        try:
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError(f"lost the connection to {self.base_url}: {_reason(exc)}") from exc
        finally:
            connection.close()
        answer = Answer(response.status, response.getheader("Content-Type", ""), body)
        if answer.status >= 400:
            raise self._refusal(answer)
        return answer

    def _refusal(self, answer: Answer) -> ApiError:
        if answer.content_type.startswith("application/json"):
            with contextlib.suppress(ValueError):
                body = json.loads(answer.body)
                if isinstance(body, dict) and isinstance(body.get("msg"), str):
                    return ApiError(answer.status, body["msg"])
        what = _what(answer.content_type)
        return ApiError(
            answer.status, f"{self.base_url} did not answer as dockworker does{what}: is it dockworker?"
        )

    # --- what the clients call ---

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A request whose answer must be a JSON object."""
        answer = self._send(method, path, **kwargs)
        body = None
        if answer.content_type.startswith("application/json"):
            with contextlib.suppress(ValueError):
                body = json.loads(answer.body)
        if not isinstance(body, dict):
            raise ClientError(
                f"{self.base_url} answered {method} {path} with something other than dockworker's "
                f"JSON{_what(answer.content_type)}: is dockworker listening there?"
            )
        return body

    def field(self, method: str, path: str, key: str, **kwargs: Any) -> Any:
        """The ``key`` of a JSON object answer."""
        body = self.json(method, path, **kwargs)
        if key not in body:
            raise ClientError(f"{self.base_url}: the answer to {method} {path} has no {key!r}")
        return body[key]

    def text(self, path: str, **kwargs: Any) -> str:
        return self._send("GET", path, **kwargs).text

    def content(self, path: str, **kwargs: Any) -> bytes:
        return self._send("GET", path, **kwargs).body

    def stream(self, path: str, **params: Any) -> Iterator[bytes]:
        """The body of a streamed answer, as it comes. StreamCut when the connection ends
        before the server finished the answer."""
        connection, response = self._open("GET", path, params=params, timeout=None)
        try:
            if response.status >= 400:
                raise self._refusal(
                    Answer(response.status, response.getheader("Content-Type", ""), response.read())
                )
            while True:
                try:
                    data = response.read1(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise StreamCut(f"lost the connection to {self.base_url}: {_reason(exc)}") from exc
                if not data:
                    return
                yield data
        finally:
            connection.close()


def _multipart(files: Mapping[str, FormPart]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = bytearray()
    for name, (file_name, content, content_type) in files.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{file_name}"' if file_name else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n"
        body += head.encode()
        body += content.encode() if isinstance(content, str) else content
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def _proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    """The proxy the environment names for this URL, if any (most runs have none: the check
    of the environment is cheap, urllib's parsing of it is not)."""
    if not any(key.lower() in (f"{scheme}_proxy", "all_proxy") for key in os.environ):
        return None
    import urllib.request

    proxy = urllib.request.getproxies().get(scheme) or urllib.request.getproxies().get("all")
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or 80


def _reason(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return "the answer was cut short"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection"
    return str(exc) or type(exc).__name__


def _what(content_type: str) -> str:
    kind = content_type.split(";")[0].strip()
    return f" (it sent {kind})" if kind else ""
