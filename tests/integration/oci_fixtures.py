"""Fixtures of the OCI backend's tests: a real OCI engine per runtime (crun and runc), over the
real Docker engine's images, and the checks that nothing outlives a test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from dockworker.engine import DockerEngine, Engine
from dockworker.engine.cgroupfs import CgroupLayout
from dockworker.engine.oci import OciEngine
from dockworker.engine.oci.cgroups import SCOPE_DIR
from dockworker.runner import Runner
from dockworker.settings import Settings
from tests.conftest import StartRunner, require

RUNTIMES = ("crun", "runc")
# The OCI runtime the shared suites (hostile tasks, runner outcomes) run on besides Docker.
SHARED_SUITES_RUNTIME = os.environ.get("DOCKWORKER_TEST_OCI_RUNTIME", "crun")


def require_runtime(runtime: str) -> None:
    require(os.geteuid() == 0, "the OCI backend runs as root")
    require(
        shutil.which(runtime) is not None, f"{runtime} is not installed (bash scripts/setup.sh installs it)"
    )


def leftovers(root: Path) -> list[str]:
    """What an OCI engine rooted at ``root`` left behind: containers, runtime state, cgroups,
    mounts, supervisor processes."""
    found = [f"container {p.name}" for p in (root / "containers").iterdir()]
    removed = root / "removed"
    found += [f"removed container {p.name}" for p in removed.iterdir()] if removed.is_dir() else []
    found += [f"runtime state {p.name}" for p in (root / "runtime").iterdir()]
    for hierarchy in CgroupLayout.detect().hierarchies():
        scope = hierarchy / SCOPE_DIR
        for cgroup in scope.glob("*/*") if scope.is_dir() else ():
            if cgroup.is_dir() and cgroup.parent.name == OciEngine.scope_of(root):
                found.append(f"cgroup {cgroup}")
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    found += [f"mount {line.split()[4]}" for line in mounts if str(root) in line]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(root).encode() in cmdline:
                found.append(f"process {proc.name}: {cmdline[:120]!r}")
    return found


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    require_runtime(name)
    return name


@pytest.fixture
def oci_root(runtime: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One root per runtime for the whole session, so images are unpacked once."""
    return tmp_path_factory.getbasetemp() / f"oci-{runtime}"


@pytest.fixture
def oci_engine(oci_root: Path, runtime: str, engine: DockerEngine) -> Iterator[OciEngine]:
    """An OCI engine; at the end of the test nothing it ran may be left."""
    oci = OciEngine(oci_root, engine, runtime=runtime)
    yield oci
    oci.close()  # what was removed is deleted by then
    left = leftovers(oci_root)
    for container in (oci_root / "containers").iterdir():  # a failed test leaves nothing running
        oci.remove(container.name)
    oci.close()
    assert left == []


class StartOciRunner(Protocol):
    """The ``start_oci_runner`` fixture: start a runner with these settings (the test's
    ``settings`` by default) on the test's OCI engine."""

    def __call__(self, runner_settings: Settings | None = None) -> Runner: ...


@pytest.fixture
def start_oci_runner(oci_engine: OciEngine, start_runner: StartRunner) -> StartOciRunner:
    """Start a runner on the OCI engine (stopped before the engine is checked for leftovers)."""

    def start(runner_settings: Settings | None = None) -> Runner:
        return start_runner(runner_settings, oci_engine)

    return start


@pytest.fixture(name="engine", params=["docker", "oci"])
def both_backends(
    request: pytest.FixtureRequest, engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """The task engine of a test suite that must hold on both backends: the Docker engine, or
    the OCI backend (over the Docker engine's images). A module opts in with
    ``engine = oci_fixtures.both_backends``; its runners (``start_runner``) and its own engine
    checks then run on each, and the OCI runs must leave nothing behind."""
    if request.param == "docker":
        yield engine
        return
    require_runtime(SHARED_SUITES_RUNTIME)
    root = tmp_path_factory.getbasetemp() / f"oci-{SHARED_SUITES_RUNTIME}"
    oci = OciEngine(root, engine, runtime=SHARED_SUITES_RUNTIME)
    yield oci
    oci.close()
    left = leftovers(root)
    for container in (root / "containers").iterdir():
        oci.remove(container.name)
    oci.close()
    assert left == []
