"""Where the CLI finds its project id, token and server: IronWorker's own order, so that an
existing IronWorker setup works unchanged, plus the ``iron.json`` that ``dockworker up`` writes.

From lowest to highest precedence, each source overriding the keys it sets:

1. ``~/.iron.json``
2. ``IRON_PROJECT_ID``, ``IRON_TOKEN``, ``IRON_HOST``, ``IRON_PORT``, ``IRON_PROTOCOL``
3. the same as ``IRON_WORKER_*``
4. ``./iron.json``, or when there is none ``DATA_DIR/iron.json`` (``DOCKWORKER_DATA_DIR``, default
   ``data``), the one ``dockworker up`` writes
5. ``--config PATH``, else ``DOCKWORKER_IRON_JSON``: this file must exist

A file's keys may also sit in an ``"iron_worker"`` object, which wins over its top level."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ClientError

KEYS = ("project_id", "token", "host", "port", "protocol")
PRODUCT = "iron_worker"


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    base_url: str
    project_id: str
    token: str
    sources: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: Path | None = None, env: Mapping[str, str] | None = None) -> ClientConfig:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        sources: list[str] = []

        def take(found: dict[str, Any], source: str) -> None:
            if found:
                values.update(found)
                sources.append(source)

        home = Path(env.get("HOME") or Path.home()) / ".iron.json"
        if home.is_file():
            take(_read(home), str(home))
        take(_from_env(env, "IRON_"), "IRON_* variables")
        take(_from_env(env, "IRON_WORKER_"), "IRON_WORKER_* variables")
        local = Path("iron.json")
        data_dir_file = Path(env.get("DOCKWORKER_DATA_DIR") or "data") / "iron.json"
        for candidate in (local, data_dir_file):
            if candidate.is_file():
                take(_read(candidate), str(candidate))
                break
        explicit = path or (Path(env["DOCKWORKER_IRON_JSON"]) if env.get("DOCKWORKER_IRON_JSON") else None)
        if explicit is not None:
            option = "--config" if path else "DOCKWORKER_IRON_JSON"
            if not explicit.is_file():
                raise ClientError(f"{option} {explicit}: no such file")
            take(_read(explicit), str(explicit))
        return cls._build(values, tuple(sources), data_dir_file)

    @classmethod
    def _build(cls, values: dict[str, Any], sources: tuple[str, ...], data_dir_file: Path) -> ClientConfig:
        missing = [key for key in ("project_id", "token") if not values.get(key)]
        if missing:
            looked = ", ".join(sources) if sources else "nothing found"
            raise ClientError(
                f"no {' or '.join(missing)} configured (read: {looked}). Start the service with "
                f"'dockworker up' (it writes {data_dir_file}), set DOCKWORKER_IRON_JSON, "
                "or pass --config PATH"
            )
        protocol = str(values.get("protocol") or "http")
        if protocol not in ("http", "https"):
            raise ClientError(f"protocol {protocol!r} (from {sources[-1]}): use http or https")
        host = str(values.get("host") or "127.0.0.1")
        try:
            port = int(values.get("port") or (443 if protocol == "https" else 8080))
        except (TypeError, ValueError) as exc:
            raise ClientError(f"port {values.get('port')!r} is not a number") from exc
        return cls(
            base_url=f"{protocol}://{host}:{port}",
            project_id=str(values["project_id"]),
            token=str(values["token"]),
            sources=sources,
        )


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ClientError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ClientError(f"{path} must hold a JSON object")
    nested = raw.get(PRODUCT)
    merged = {**raw, **nested} if isinstance(nested, dict) else raw
    if "scheme" in merged and "protocol" not in merged:
        merged["protocol"] = merged["scheme"]
    return {key: merged[key] for key in KEYS if merged.get(key) not in (None, "")}


def _from_env(env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    return {key: env[prefix + key.upper()] for key in KEYS if env.get(prefix + key.upper())}
