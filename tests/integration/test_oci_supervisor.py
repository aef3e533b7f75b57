"""The supervisor script itself, under both shells it runs in (the host's static busybox, and
util-linux's unshare with bash where there is none), with a stand-in for the runtime: what it
reports, what it records when told to start, and when dismissed before a start. Its mounts are
real, in a private mount namespace, as in production."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockworker.engine.oci import supervisor
from dockworker.engine.oci.engine import _pipe
from dockworker.engine.oci.parking import ParkedSupervisor, read_report
from dockworker.engine.oci.supervisor import ContainerDir, Toolset
from tests.conftest import require

# What the runtime does here: writes the pid file and some output on both streams, then exits
# with a status the supervisor's own setup failures also use (a task may exit 93 too).
FAKE_RUNTIME = """#!/bin/sh
while [ "$#" -gt 1 ]; do
  case "$1" in --pid-file) echo $$ >"$2"; shift ;; esac
  shift
done
[ -d "$PWD" ] && grep -q " $(cd "$(dirname "$0")" && pwd)/c/rootfs overlay" /proc/self/mounts && echo mounted
sleep 0.1  # what follows comes in another read
echo out
echo err >&2
exit 93
"""


def toolsets() -> Iterator[tuple[str, Toolset]]:
    busybox = Toolset.find()
    if busybox.shell[0] == supervisor.BUSYBOX:
        yield "busybox", busybox
    if shutil.which("unshare") and shutil.which("bash"):
        yield "bash", Toolset.find(busybox="/no/such/busybox")  # the fallback, as a host without it


@pytest.fixture(params=[name for name, _ in toolsets()])
def tools(request: pytest.FixtureRequest) -> Toolset:
    require(os.geteuid() == 0, "the supervisor mounts in a mount namespace of its own: root")
    return dict(toolsets())[request.param]


def park(tmp_path: Path, tools: Toolset) -> ParkedSupervisor:
    container = ContainerDir(tmp_path / "c")
    for directory in (container.path, container.rootfs, container.scratch, tmp_path / "layers" / "l1"):
        directory.mkdir(parents=True)
    container.output.touch()
    runtime = tmp_path / "runtime"
    runtime.write_text(FAKE_RUNTIME)
    runtime.chmod(0o755)
    report, report_end = _pipe(child_end=1)
    task_end, task_line = _pipe(child_end=0)
    output_end, output_line = _pipe(child_end=0)
    pipes = (report_end, task_end, output_end)
    with open(container.lock, "w") as lock, open(container.supervisor_log, "w") as log:
        process = subprocess.Popen(
            supervisor.argv(
                tools=tools,
                container=container,
                pipes=pipes,
                layer_root=tmp_path / "layers",
                runtime_binary=str(runtime),
                runtime_options=("--an-option",),
                runtime_root=tmp_path / "state",
                hide_unified=False,
            ),
            stdin=subprocess.DEVNULL,
            stdout=lock,
            stderr=log,
            pass_fds=pipes,
            start_new_session=True,
        )
    for fd in pipes:
        os.close(fd)
    try:
        runtime_pid = read_report(report, process)
    finally:
        os.close(report)
    return ParkedSupervisor(
        container=container,
        process=process,
        task_line=task_line,
        output_line=output_line,
        runtime_pid=runtime_pid,
    )


def test_a_parked_supervisor_starts_the_runtime_and_records_its_status(
    tmp_path: Path, tools: Toolset
) -> None:
    unit = park(tmp_path, tools)
    assert unit.runtime_pid != unit.process.pid  # its runtime side, a process of its own
    assert Path(f"/proc/{unit.runtime_pid}").exists()
    unit.launch(lowerdir="l1", scratch_bytes=1 << 20, keep_bytes=11)
    assert unit.process.wait(30) == 0
    container = unit.container
    assert container.exit.read_text() == "93\n"  # the runtime's status, not a setup failure
    assert not container.setup.exists()
    assert container.output.read_text() == "mounted\nout"  # 11 bytes kept, in the order written
    assert container.pid.read_text().strip() == str(unit.runtime_pid)  # it became the runtime
    assert container.supervisor_log.read_text() == ""


def test_a_dismissed_supervisor_starts_nothing(tmp_path: Path, tools: Toolset) -> None:
    unit = park(tmp_path, tools)
    unit.dismiss()
    assert unit.process.returncode == 93
    container = unit.container
    assert container.setup.read_text() == "93\n"
    assert not container.exit.exists() and not container.pid.exists()
    assert container.output.read_text() == ""
    assert supervisor.SETUP_FAILURES[93].startswith("its supervisor was dismissed")


def test_a_root_that_cannot_be_mounted_is_a_setup_failure(tmp_path: Path, tools: Toolset) -> None:
    unit = park(tmp_path, tools)
    unit.launch(lowerdir="no-such-layer", scratch_bytes=1 << 20, keep_bytes=100)
    assert unit.process.wait(30) == 91
    assert unit.container.setup.read_text() == "91\n" and not unit.container.exit.exists()


def test_without_a_static_busybox_the_script_runs_in_bash(tmp_path: Path) -> None:
    require(shutil.which("bash") is not None and shutil.which("unshare") is not None, "bash and unshare")
    tools = Toolset.find(busybox=str(tmp_path / "no-busybox"))
    assert tools.shell == (shutil.which("bash"),) and tools.unshare == (shutil.which("unshare"),)
    assert tools.keep_first == "head"  # coreutils' dd with a byte count stops after a short read
