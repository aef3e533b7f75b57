"""The one HTTP client of the CLI, for the project API and the admin API alike: a token, a base
URL, JSON answers checked for what dockworker sends, and errors turned into ClientError with
the server's ``msg`` (or a plain word on what answered instead)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ClientError, DockworkerError

if TYPE_CHECKING:
    import httpx2


class ApiError(ClientError):
    """The server refused the request."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status_code})")
        self.status_code = status_code


class StreamCut(DockworkerError):
    """A streamed answer ended before the server finished it (connection lost, server stopped)."""


class Http:
    def __init__(self, base_url: str, token: str, *, prefix: str = "", timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self._prefix = prefix
        self._token = token
        self._timeout = timeout
        self._client: httpx2.Client | None = None

    def _http(self) -> httpx2.Client:
        if self._client is None:
            import httpx2  # about 80 ms: only commands that talk to the API pay for it

            self._client = httpx2.Client(
                base_url=self.base_url + self._prefix,
                headers={"Authorization": f"OAuth {self._token}", "Accept": "application/json"},
                timeout=self._timeout,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        import httpx2

        try:
            response = self._http().request(method, path, **kwargs)
        except httpx2.TransportError as exc:
            raise ClientError(f"cannot reach the dockworker API at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise self._refusal(response.status_code, response.headers.get("content-type", ""), response.text)
        return response

    def _refusal(self, status: int, content_type: str, text: str) -> ApiError:
        if content_type.startswith("application/json"):
            with contextlib.suppress(ValueError):
                body = json.loads(text)
                if isinstance(body, dict) and isinstance(body.get("msg"), str):
                    return ApiError(status, body["msg"])
        return ApiError(
            status,
            f"{self.base_url} did not answer as dockworker does{_what(content_type)}: is it dockworker?",
        )

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A request whose answer must be a JSON object."""
        response = self._send(method, path, **kwargs)
        content_type = response.headers.get("content-type", "")
        try:
            body = response.json() if content_type.startswith("application/json") else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ClientError(
                f"{self.base_url} answered {method} {path} with something other than dockworker's "
                f"JSON{_what(content_type)}: is dockworker listening there?"
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
        return self._send("GET", path, **kwargs).content

    def stream(self, path: str, **params: Any) -> Iterator[bytes]:
        """The body of a streamed answer, as it comes. StreamCut when the connection ends
        before the server finished the answer."""
        import httpx2

        try:
            with self._http().stream("GET", path, params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._refusal(
                        response.status_code, response.headers.get("content-type", ""), response.text
                    )
                yield from response.iter_bytes()
        except httpx2.ConnectError as exc:
            raise ClientError(f"cannot reach the dockworker API at {self.base_url}: {exc}") from exc
        except httpx2.TransportError as exc:
            raise StreamCut(f"lost the connection to {self.base_url}: {exc}") from exc


def _what(content_type: str) -> str:
    kind = content_type.split(";")[0].strip()
    return f" (it sent {kind})" if kind else ""
