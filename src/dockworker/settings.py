"""Settings: one explicit object passed to every component. Environment variables
``DOCKWORKER_<FIELD>`` override the defaults; command-line options override both."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ClientError

MB = 1024 * 1024
RUNTIMES = ("docker", "oci")
OCI_RUNTIMES = ("crun", "runc")
# The longest a token may be made to last (API and CLI refuse longer lifetimes).
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Per-task resource limits. Code packages may lower or raise them within the maxima."""

    memory_mb: int = 512
    max_memory_mb: int = 4096
    cpus: float = 1.0
    max_cpus: float = 4.0
    pids: int = 256
    max_pids: int = 4096
    tmp_mb: int = 64
    task_dir_mb: int = 256
    log_bytes: int = 8 * MB
    timeout_s: int = 3600
    max_timeout_s: int = 86400
    max_delay_s: int = 7 * 24 * 3600


@dataclass(frozen=True, kw_only=True)
class Settings:
    data_dir: Path = Path("data")
    store_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    docker_host: str | None = None
    # How tasks run: "docker" (through dockerd) or "oci" (an OCI runtime directly, docs/oci.md).
    runtime: str = "docker"
    oci_runtime: str = "crun"
    runner_id: str | None = None
    slots: int = field(default_factory=lambda: 2 * (os.cpu_count() or 1))
    clusters: tuple[str, ...] = ("default",)
    poll_interval_s: float = 0.5
    lease_ttl_s: float = 30.0
    heartbeat_interval_s: float = 5.0
    starvation_bound_s: float = 300.0
    min_run_every_s: int = 60
    max_schedules_per_project: int = 1000
    scheduler_interval_s: float = 0.25
    infra_retry_budget: int = 5
    infra_retry_base_delay_s: float = 1.0
    infra_retry_max_delay_s: float = 60.0
    shutdown_grace_s: float = 30.0
    max_payload_bytes: int = 64 * 1024
    max_config_bytes: int = 64 * 1024
    max_request_bytes: int = 8 * MB
    max_code_bytes: int = 100 * MB
    max_code_unpacked_bytes: int = 512 * MB
    max_code_entries: int = 10_000
    max_batch_tasks: int = 1000
    task_user: str = "1000:1000"
    metrics_token: str | None = None  # besides an admin token, this bearer token may read /metrics
    # A runner without the API in its process serves its own metrics here (0: it does not).
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    hud_session_s: int = 8 * 3600  # a HUD login lasts this long
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ClientError(f"runtime {self.runtime!r}: choose one of {', '.join(RUNTIMES)}")
        if self.oci_runtime not in OCI_RUNTIMES:
            raise ClientError(f"OCI runtime {self.oci_runtime!r}: choose one of {', '.join(OCI_RUNTIMES)}")

    @property
    def database_url(self) -> str:
        return self.store_url or f"sqlite:///{(self.data_dir / 'dockworker.db').resolve()}"

    @property
    def code_cache_dir(self) -> Path:
        return self.data_dir / "code-cache"

    @property
    def task_dirs(self) -> Path:
        return self.data_dir / "tasks"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_ENV_PREFIX = "DOCKWORKER_"


def _convert(raw: str, target: Any, name: str) -> Any:
    try:
        if target is bool:
            return raw.lower() in {"1", "true", "yes", "on"}
        if target is int:
            return int(raw)
        if target is float:
            return float(raw)
        if isinstance(target, type) and issubclass(target, Path):
            return Path(raw)
        if target == "tuple[str, ...]":
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ClientError(f"{_ENV_PREFIX}{name.upper()}: invalid value {raw!r}") from exc
    return raw


def load_settings(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment, then apply explicit overrides (None = not given)."""
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    limit_values: dict[str, Any] = {}
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        raw = env.get(_ENV_PREFIX + f.name.upper())
        if raw is not None and f.name != "limits":
            values[f.name] = _convert(
                raw, type(getattr(defaults, f.name)) if f.name != "clusters" else "tuple[str, ...]", f.name
            )
    for f in dataclasses.fields(Limits):
        raw = env.get(_ENV_PREFIX + f.name.upper())
        if raw is not None:
            limit_values[f.name] = _convert(raw, type(getattr(defaults.limits, f.name)), f.name)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if limit_values:
        values["limits"] = dataclasses.replace(values.get("limits", defaults.limits), **limit_values)
    return Settings(**values)
