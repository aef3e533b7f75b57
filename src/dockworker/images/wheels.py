"""The Python side of the service images: dockworker's own wheel, built from the source checkout
it runs from, and a wheel of each dependency at exactly the version installed here, so the
image runs what was tested."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from importlib import metadata
from pathlib import Path

from ..errors import ClientError, InfrastructureError
from ..stacks.commands import LineCallback, run_command


def project_root() -> Path:
    """The source checkout dockworker is installed from (``pip install -e .``)."""
    try:
        direct_url = metadata.distribution("dockworker").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        direct_url = None
    if direct_url:
        info = json.loads(direct_url)
        url = str(info.get("url", ""))
        if url.startswith("file://") and (info.get("dir_info") or {}).get("editable"):
            root = Path(urllib.parse.unquote(url.removeprefix("file://")))
            if (root / "pyproject.toml").is_file():
                return root
    raise ClientError(
        "building the service images needs a source checkout of dockworker installed with "
        "'pip install -e .' (as scripts/setup.sh does)"
    )


def pinned_versions() -> str:
    """This environment's packages as pip constraints (``name==version`` lines)."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--all"],
        capture_output=True,
        text=True,
        check=False,
    )
    if frozen.returncode != 0:
        raise InfrastructureError(f"pip freeze failed: {frozen.stderr.strip()}")
    return "".join(line + "\n" for line in frozen.stdout.splitlines() if "==" in line)


def collect_wheels(root: Path, work: Path, on_line: LineCallback | None = None) -> list[Path]:
    """Wheels of dockworker and of everything it needs at run time (not its test extras), the
    dependencies pinned to the versions installed here. Fetched through pip's own cache and
    configuration (the host's package index)."""
    constraints = work / "constraints.txt"
    constraints.write_text(pinned_versions())
    wheel_dir = work / "wheels"
    wheel_dir.mkdir()
    run_command(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--progress-bar",
            "off",
            "--wheel-dir",
            str(wheel_dir),
            "--constraint",
            str(constraints),
            "--prefer-binary",
            str(root),
        ],
        on_line=on_line,
        env=os.environ,
    )
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not any(w.name.startswith("dockworker-") for w in wheels):
        raise InfrastructureError(f"pip wheel made no dockworker wheel in {wheel_dir}")
    return wheels
