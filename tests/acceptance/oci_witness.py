"""The OCI runtime as a witness, for runners on the OCI backend (``--runtime oci``): a stand-in
named ``crun`` first on the runners' PATH records every container the runtime is asked to run
(its task, from the bundle's own metadata) in a journal, then becomes the real crun. So the
count of starts comes from the runtime's side of the supervisor, not from dockworker's store;
and what is left is read from each runner's OCI directory and the kernel (processes, mounts,
cgroups), not asked of dockworker."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.integration.oci_fixtures import leftovers

from .engine_watch import TASK_LABEL

RUNTIME = "crun"
# $JOURNAL is substituted when installed. One line per `run`: the task, the container, the time.
WRAPPER = """#!/bin/sh
bundle= id=
prev=
for arg in "$@"; do
  [ "$prev" = --bundle ] && bundle=$arg
  prev=$arg
  id=$arg
done
case " $* " in
  *" run "*)
    task=$(sed -n 's/.*"TASK_LABEL": "\\([^"]*\\)".*/\\1/p' "$bundle/meta.json")
    echo "${task:-?} $id $(date +%s.%N)" >>"JOURNAL"
    ;;
esac
exec REAL "$@"
"""


def install_wrapper(directory: Path, journal: Path) -> Path:
    """Writes the stand-in into ``directory`` (to put first on PATH); returns ``directory``."""
    real = shutil.which(RUNTIME)
    assert real is not None, f"{RUNTIME} is not installed"
    directory.mkdir(parents=True, exist_ok=True)
    script = WRAPPER.replace("JOURNAL", str(journal)).replace("REAL", real).replace("TASK_LABEL", TASK_LABEL)
    wrapper = directory / RUNTIME
    wrapper.write_text(script)
    wrapper.chmod(0o755)
    journal.touch()
    return directory


class RuntimeStarts:
    """The journal's starts, with the interface of the Docker engine's event watcher."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal

    def start(self, since: float) -> None:
        """Nothing to start: the stand-in writes each line before the runtime runs."""

    def current_alive(self) -> bool:
        return True

    def flush(self) -> None:
        """Each line is written before its runtime runs: nothing is in flight."""

    def stop(self) -> None:
        """Nothing runs."""

    def starts(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for line in self.journal.read_text().splitlines():
            task_id, container_id, at = line.split()
            found[task_id].append({"container": container_id[:12], "time": float(at)})
        return dict(found)


def oci_containers(data_dirs: list[Path]) -> list[dict[str, Any]]:
    """The containers (created, running or exited, not removed) in the runners' OCI directories,
    as ``docker ps`` would list them (the spare supervisors' directories hold no container)."""
    found = []
    for data_dir in data_dirs:
        containers = data_dir / "oci" / "containers"
        for entry in sorted(containers.iterdir()) if containers.is_dir() else ():
            try:
                meta = json.loads((entry / "meta.json").read_text())
            except (OSError, ValueError):
                continue
            state = "exited" if (entry / "exit").exists() else "created or running"
            found.append({"ID": entry.name, "State": state, "Labels": meta.get("labels")})
    return found


def oci_leftovers(data_dirs: list[Path]) -> list[str]:
    """What the runners' OCI backends left once stopped: containers, runtime state, cgroups,
    mounts, processes."""
    return [f"{d.name}: {item}" for d in data_dirs if (d / "oci").is_dir() for item in leftovers(d / "oci")]
