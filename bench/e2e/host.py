"""The host: what it is, the containers on its engine, and the other load on it."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from e2e.common import background_busy, run_text

# --- host and clean-up ------------------------------------------------------------------------


def host_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        models = (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        cpu_model = next(models, "")
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker_server": run_text(["docker", "version", "--format", "{{.Server.Version}}"]),
        "docker_client": run_text(["docker", "version", "--format", "{{.Client.Version}}"]),
        "docker_api": run_text(["docker", "version", "--format", "{{.Server.APIVersion}}"]),
        "loadavg_start": os.getloadavg(),
    }


def containers(label_filter: str) -> list[str]:
    out = run_text(["docker", "ps", "-a", "-q", "--filter", f"label={label_filter}"])
    return out.split()


def remove_containers(ids: Sequence[str]) -> None:
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


@dataclass
class Noise:
    """Counts containers on the engine that are not this run's: other work on a shared engine
    competes for the 2 cores. Sampled between measurements, never inside one."""

    labels: Sequence[str]
    samples: list[int] = field(default_factory=list)

    def foreign(self) -> int:
        everything = set(run_text(["docker", "ps", "-a", "-q"]).split())
        ours = {c for label in self.labels for c in containers(label)}
        return len(everything - ours)

    def sample(self) -> int:
        count = self.foreign()
        self.samples.append(count)
        return count

    def wait_quiet(self, timeout: float, quiet_checks: int = 3, max_busy: float = 0.25) -> bool:
        """Wait until, for ``quiet_checks`` seconds in a row, no foreign container exists and
        the host's CPUs are less than ``max_busy`` busy."""
        deadline = time.monotonic() + timeout
        streak = 0
        while time.monotonic() < deadline:
            quiet = self.foreign() == 0 and background_busy(1.0) < max_busy
            streak = streak + 1 if quiet else 0
            if streak >= quiet_checks:
                return True
        return False

    def summary(self) -> dict[str, Any]:
        busy = sum(1 for c in self.samples if c)
        return {
            "samples": len(self.samples),
            "samples_with_foreign": busy,
            "max_foreign": max(self.samples or [0]),
        }
