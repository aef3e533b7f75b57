"""A small IronWorker v2 API client for the CLI, configured from an ``iron.json``."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from ..errors import ClientError


class ApiError(ClientError):
    """The server refused the request."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status_code})")
        self.status_code = status_code


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    base_url: str
    project_id: str
    token: str

    @classmethod
    def load(cls, path: Path | None) -> ClientConfig:
        candidates = [path] if path else []
        if not path:
            env = os.environ.get("DOCKWORKER_IRON_JSON")
            candidates += [Path(env)] if env else []
            data_dir = Path(os.environ.get("DOCKWORKER_DATA_DIR", "data"))
            candidates += [Path("iron.json"), data_dir / "iron.json"]
        for candidate in candidates:
            if candidate.is_file():
                return cls.from_file(candidate)
        raise ClientError(
            "no iron.json found: start the service with 'dockworker up' (it writes DATA_DIR/iron.json) "
            "or pass --config PATH"
        )

    @classmethod
    def from_file(cls, path: Path) -> ClientConfig:
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ClientError(f"cannot read {path}: {exc}") from exc
        nested = raw.get("iron_worker")
        if isinstance(nested, dict):
            raw = {**raw, **nested}
        try:
            protocol = raw.get("protocol", "http")
            host = raw.get("host", "127.0.0.1")
            port = int(raw.get("port", 8080))
            return cls(
                base_url=f"{protocol}://{host}:{port}", project_id=raw["project_id"], token=raw["token"]
            )
        except (KeyError, ValueError) as exc:
            raise ClientError(f"{path}: needs project_id, token, host and port ({exc})") from exc


def zip_directory(directory: Path) -> bytes:
    if not directory.is_dir():
        raise ClientError(f"{directory} is not a directory")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()


class Client:
    def __init__(self, config: ClientConfig, timeout: float = 30) -> None:
        self.config = config
        self._http = httpx2.Client(
            base_url=f"{config.base_url}/2/projects/{config.project_id}",
            headers={"Authorization": f"OAuth {config.token}", "Accept": "application/json"},
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx2.TransportError as exc:
            raise ClientError(f"cannot reach the dockworker API at {self.config.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json().get("msg", response.text)
            except ValueError:
                message = response.text
            raise ApiError(response.status_code, message)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def upload(self, data: dict[str, Any], archive: bytes | None) -> dict[str, Any]:
        files: dict[str, Any] = {"data": (None, json.dumps(data), "application/json")}
        if archive is not None:
            files["file"] = ("code.zip", archive, "application/zip")
        result: dict[str, Any] = self._call("POST", "/codes", files=files)
        return result

    def queue(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("POST", "/tasks", json={"tasks": tasks})["tasks"]
        return result

    def task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/tasks/{task_id}")
        return result

    def tasks(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/tasks", params=params)["tasks"]
        return result

    def log(self, task_id: str) -> str:
        return str(self._call("GET", f"/tasks/{task_id}/log"))

    def follow_log(self, task_id: str) -> Iterator[bytes]:
        try:
            with self._http.stream(
                "GET", f"/tasks/{task_id}/log", params={"follow": "true"}, timeout=None
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ApiError(resp.status_code, resp.json().get("msg", resp.text))
                yield from resp.iter_bytes()
        except httpx2.TransportError as exc:
            raise ClientError(f"lost the connection to the dockworker API: {exc}") from exc

    def cancel(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/tasks/{task_id}/cancel")
        return result

    def retry(self, task_id: str, delay: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/tasks/{task_id}/retry", json={"delay": delay})[
            "tasks"
        ][0]
        return result

    def code_by_name(self, name: str) -> dict[str, Any]:
        page = 0
        while True:
            found: list[dict[str, Any]] = self._call("GET", "/codes", params={"page": page, "per_page": 100})[
                "codes"
            ]
            for code in found:
                if code["name"] == name:
                    return code
            if len(found) < 100:
                raise ClientError(f"code package {name!r} not found")
            page += 1

    def code_action(self, code_id: str, action: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/codes/{code_id}/{action}")
        return result

    def schedule(self, item: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/schedules", json={"schedules": [item]})["schedules"][0]
        return result

    def schedules(self, page: int, per_page: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(
            "GET", "/schedules", params={"page": page, "per_page": per_page}
        )["schedules"]
        return result

    def cancel_schedule(self, schedule_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/schedules/{schedule_id}/cancel")
        return result
