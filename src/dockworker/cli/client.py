"""The project's side of the IronWorker v2 API, for the CLI (configured as ``config.py`` says)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ClientError
from .config import ClientConfig
from .http import Http

PAGE = 100


class Client:
    def __init__(self, config: ClientConfig, timeout: float = 30) -> None:
        self.config = config
        self.http = Http(
            config.base_url, config.token, prefix=f"/2/projects/{config.project_id}", timeout=timeout
        )

    @classmethod
    def configured(cls, path: Path | None) -> Client:
        return cls(ClientConfig.load(path))

    def close(self) -> None:
        self.http.close()

    # --- code packages ---

    def upload(self, data: dict[str, Any], archive: bytes | None) -> dict[str, Any]:
        files: dict[str, Any] = {"data": (None, json.dumps(data), "application/json")}
        if archive is not None:
            files["file"] = ("code.zip", archive, "application/zip")
        return self.http.json("POST", "/codes", files=files)

    def codes(self) -> list[dict[str, Any]]:
        """Every code package, oldest first (the API pages by 100)."""
        found: list[dict[str, Any]] = []
        page = 0
        while True:
            batch: list[dict[str, Any]] = self.http.field(
                "GET", "/codes", "codes", params={"page": page, "per_page": PAGE}
            )
            found += batch
            if len(batch) < PAGE:
                return found
            page += 1

    def code_by_name(self, name: str) -> dict[str, Any]:
        for code in self.codes():
            if code["name"] == name:
                return code
        raise ClientError(f"code package {name!r} not found (see 'dockworker codes list')")

    def code(self, code_id: str) -> dict[str, Any]:
        return self.http.json("GET", f"/codes/{code_id}")

    def delete_code(self, code_id: str) -> dict[str, Any]:
        return self.http.json("DELETE", f"/codes/{code_id}")

    def revisions(self, code_id: str, page: int, per_page: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.http.field(
            "GET", f"/codes/{code_id}/revisions", "revisions", params={"page": page, "per_page": per_page}
        )
        return found

    def download(self, code_id: str, revision: int | None) -> bytes:
        params = {"revision": revision} if revision is not None else {}
        return self.http.content(f"/codes/{code_id}/download", params=params)

    def code_stats(self, code_id: str) -> dict[str, Any]:
        return self.http.json("GET", f"/codes/{code_id}/stats")

    def code_action(self, code_id: str, action: str) -> dict[str, Any]:
        return self.http.json("POST", f"/codes/{code_id}/{action}")

    # --- tasks ---

    def queue(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.http.field("POST", "/tasks", "tasks", json_body={"tasks": tasks})
        return found

    def task(self, task_id: str, wait_s: float | None = None) -> dict[str, Any]:
        """The task; with ``wait_s``, as soon as it has ended, or as it is after that long (the
        server waits: no polling)."""
        params = {"wait": wait_s} if wait_s else None
        return self.http.json("GET", f"/tasks/{task_id}", params=params)

    def tasks(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.http.field("GET", "/tasks", "tasks", params=params)
        return found

    def events(self, task_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.http.field("GET", f"/tasks/{task_id}/events", "events")
        return found

    def log(self, task_id: str) -> str:
        return self.http.text(f"/tasks/{task_id}/log")

    def follow_log(self, task_id: str) -> Iterator[bytes]:
        return self.http.stream(f"/tasks/{task_id}/log", follow="true")

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.http.json("POST", f"/tasks/{task_id}/cancel")

    def retry(self, task_id: str, delay: int) -> dict[str, Any]:
        found: list[dict[str, Any]] = self.http.field(
            "POST", f"/tasks/{task_id}/retry", "tasks", json_body={"delay": delay}
        )
        return found[0]

    # --- schedules ---

    def schedule(self, item: dict[str, Any]) -> dict[str, Any]:
        found: list[dict[str, Any]] = self.http.field(
            "POST", "/schedules", "schedules", json_body={"schedules": [item]}
        )
        return found[0]

    def schedules(self, page: int, per_page: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.http.field(
            "GET", "/schedules", "schedules", params={"page": page, "per_page": per_page}
        )
        return found

    def cancel_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self.http.json("POST", f"/schedules/{schedule_id}/cancel")
