"""What a cgroup's accounting says (cgroup v1 and v2, on fake cgroup trees), and the Docker
adapter's per-task parent cgroups: where they are made, read and removed. Real containers
under real cgroups: tests/integration/test_task_usage.py."""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import pytest

from dockworker.engine import UNKNOWN_USAGE, DockerEngine, ResourceUsage
from dockworker.engine.cgroupfs import CgroupLayout, read_usage
from dockworker.engine.docker_accounting import AccountingParents

REL = Path("dockworker/inst/task.0badcafe")
COMBINED = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
"""
UNIFIED = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def v1_layout(root: Path) -> CgroupLayout:
    hierarchies = {name: root / name for name in ("cpu", "cpuacct", "memory", "cpuset")}
    for path in hierarchies.values():
        path.mkdir(parents=True, exist_ok=True)
    return CgroupLayout(
        v1=tuple(hierarchies.values()),
        memory_v1=hierarchies["memory"],
        cpuacct_v1=hierarchies["cpuacct"],
        unified=root / "unified",
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_layout_finds_cpuacct_mounted_with_cpu() -> None:
    layout = CgroupLayout.detect(COMBINED)
    assert layout.cpuacct_v1 == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert layout.accounting_hierarchies() == (
        Path("/sys/fs/cgroup/cpu,cpuacct"),
        Path("/sys/fs/cgroup/memory"),
    )


def test_on_cgroup_v2_everything_is_read_from_the_unified_hierarchy() -> None:
    layout = CgroupLayout.detect(UNIFIED)
    assert layout.cpuacct_v1 is None and layout.accounting_hierarchies() == (Path("/sys/fs/cgroup"),)


def test_v1_cpu_time_and_memory_high_water_mark(tmp_path: Path) -> None:
    layout = v1_layout(tmp_path)
    write(tmp_path / "cpuacct" / REL / "cpuacct.usage", "1234567890\n")
    write(tmp_path / "memory" / REL / "memory.max_usage_in_bytes", "157286400\n")
    assert read_usage(layout, REL) == ResourceUsage(cpu_time_ms=1234, peak_memory_bytes=157286400)


def test_v1_without_the_memory_file_knows_the_cpu_time_only(tmp_path: Path) -> None:
    layout = v1_layout(tmp_path)
    write(tmp_path / "cpuacct" / REL / "cpuacct.usage", "5000000")
    assert read_usage(layout, REL) == ResourceUsage(cpu_time_ms=5, peak_memory_bytes=None)


@pytest.mark.parametrize("cpu", [None, "0", "garbage"])
def test_no_cpu_counted_means_the_cgroup_did_not_see_the_container(tmp_path: Path, cpu: str | None) -> None:
    layout = v1_layout(tmp_path)
    if cpu is not None:
        write(tmp_path / "cpuacct" / REL / "cpuacct.usage", cpu)
    write(tmp_path / "memory" / REL / "memory.max_usage_in_bytes", "4096")
    assert read_usage(layout, REL) == UNKNOWN_USAGE


def test_v2_usage_usec_and_memory_peak(tmp_path: Path) -> None:
    layout = CgroupLayout(v1=(), memory_v1=None, unified=tmp_path)
    write(tmp_path / REL / "cpu.stat", "usage_usec 1500400\nuser_usec 1400000\nsystem_usec 100400\n")
    write(tmp_path / REL / "memory.peak", "209715200\n")
    assert read_usage(layout, REL) == ResourceUsage(cpu_time_ms=1500, peak_memory_bytes=209715200)


def test_v2_before_linux_5_19_has_no_memory_peak(tmp_path: Path) -> None:
    layout = CgroupLayout(v1=(), memory_v1=None, unified=tmp_path)
    write(tmp_path / REL / "cpu.stat", "user_usec 1\nusage_usec 2000\n")
    assert read_usage(layout, REL) == ResourceUsage(cpu_time_ms=2, peak_memory_bytes=None)


def test_v2_without_cpu_stat_is_unknown(tmp_path: Path) -> None:
    layout = CgroupLayout(v1=(), memory_v1=None, unified=tmp_path)
    write(tmp_path / REL / "memory.peak", "1")
    assert read_usage(layout, REL) == UNKNOWN_USAGE
    assert read_usage(CgroupLayout(v1=(), memory_v1=None, unified=None), REL) == UNKNOWN_USAGE


# --- the Docker adapter's parent cgroups -----------------------------------------------------


def test_a_parent_is_made_in_the_accounting_hierarchies_only(tmp_path: Path) -> None:
    layout = v1_layout(tmp_path)
    parents = AccountingParents(layout)
    parent = parents.create("inst", "a" * 24)
    assert parent is not None and parent.startswith(f"/dockworker/inst/{'a' * 24}.")
    made = sorted(str(p.relative_to(tmp_path)).split("/")[0] for p in tmp_path.glob("*/dockworker/inst/*"))
    # not in cpuset: a cpuset cgroup made empty would stop the container from starting
    assert made == ["cpuacct", "memory"]
    assert parents.owns(parent) and parents.task_ids("inst") == {"a" * 24}


@pytest.mark.parametrize(
    ("installation", "task_id"), [("inst", "../../etc"), ("a/b", "t"), ("", "t"), ("i", "x y")]
)
def test_names_that_are_not_plain_get_no_parent(tmp_path: Path, installation: str, task_id: str) -> None:
    assert AccountingParents(v1_layout(tmp_path)).create(installation, task_id) is None


def test_only_parents_of_dockworker_are_read_or_removed(tmp_path: Path) -> None:
    layout = v1_layout(tmp_path)
    other = tmp_path / "memory" / "docker"
    other.mkdir()
    parents = AccountingParents(layout)
    assert not parents.owns("/docker") and not parents.owns("/dockworker/inst/t.0badcafe/../../x")
    assert parents.usage("/docker") == UNKNOWN_USAGE
    assert parents.remove("/docker") and other.is_dir()


def test_removal_takes_the_parent_out_of_every_hierarchy(tmp_path: Path) -> None:
    layout = v1_layout(tmp_path)
    parents = AccountingParents(layout)
    first = parents.create("inst", "a" * 24)
    second = parents.create("inst", "b" * 24)
    assert first is not None and second is not None
    (tmp_path / "cpuset" / first.lstrip("/")).mkdir(parents=True)  # as runc makes it
    write(tmp_path / "cpuacct" / first.lstrip("/") / "cpuacct.usage", "7000000")
    assert parents.usage(first) == ResourceUsage(cpu_time_ms=7, peak_memory_bytes=None)
    (tmp_path / "cpuacct" / first.lstrip("/") / "cpuacct.usage").unlink()  # a real rmdir ignores it
    assert parents.remove(first)
    assert not list(tmp_path.glob(f"*/dockworker/inst/{'a' * 24}.*"))
    assert (tmp_path / "memory" / "dockworker" / "inst").is_dir()  # the other task's is there
    assert parents.release("inst", "b" * 24)
    assert parents.task_ids("inst") == set()
    # The installation's directory stays while the engine is in use (runc making a path under
    # it must not find it removed midway), and goes when it closes.
    assert list(tmp_path.glob("*/dockworker/inst"))
    parents.tidy("inst")
    assert not list(tmp_path.glob("*/dockworker/inst"))


def test_a_parent_still_in_use_stays(tmp_path: Path) -> None:
    layout = v1_layout(tmp_path)
    parents = AccountingParents(layout)
    parent = parents.create("inst", "c" * 24)
    assert parent is not None
    (tmp_path / "memory" / parent.lstrip("/") / "container").mkdir()  # rmdir refuses, as a busy cgroup
    assert not parents.remove(parent)
    assert not parents.release("inst", "c" * 24)
    assert parents.task_ids("inst") == {"c" * 24}


def test_a_process_that_may_not_make_cgroups_stops_trying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parents = AccountingParents(v1_layout(tmp_path))

    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert parents.create("inst", "d" * 24) is None
    assert not parents.enabled
    monkeypatch.undo()
    assert parents.create("inst", "d" * 24) is None  # not tried again
    assert not list(tmp_path.glob("*/dockworker/inst/*"))


def test_no_accounting_hierarchy_means_no_parents(tmp_path: Path) -> None:
    parents = AccountingParents(CgroupLayout(v1=(), memory_v1=None, unified=None))
    assert not parents.enabled and parents.create("inst", "e" * 24) is None


class _SystemdEngine:
    """The one call the adapter makes to learn its cgroup driver."""

    def __init__(self) -> None:
        self.inspected = 0

    def info(self) -> dict[str, Any]:
        return {"CgroupDriver": "systemd", "CgroupVersion": "2"}

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        self.inspected += 1
        return {"HostConfig": {"CgroupParent": ""}}


def test_with_the_systemd_driver_usage_is_not_recorded(caplog: pytest.LogCaptureFixture) -> None:
    engine = DockerEngine.__new__(DockerEngine)
    api = _SystemdEngine()
    engine._api = api  # type: ignore[assignment]
    engine._accounting_lock = threading.Lock()
    engine._accounting_checked = False
    engine._parents = None
    assert engine.usage("f" * 64) == UNKNOWN_USAGE
    assert engine.accounted_tasks("inst") == set() and engine.release_accounting("inst", "t")
    assert api.inspected == 0
    assert [r.getMessage() for r in caplog.records].count(
        "engine.usage_unavailable: task usage is recorded with the cgroupfs cgroup driver only"
    ) == 1


class _RecordingEngine(_SystemdEngine):
    """The engine calls a task's container makes, counted; the cgroupfs driver."""

    def __init__(self) -> None:
        super().__init__()
        self.created: dict[str, str] = {}
        self.removed: list[str] = []

    def info(self) -> dict[str, Any]:
        return {"CgroupDriver": "cgroupfs", "CgroupVersion": "1"}

    def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
        return {"CgroupParent": kwargs["cgroup_parent"]}

    def create_container(self, image: str, command: list[str], **kwargs: Any) -> dict[str, str]:
        container_id = f"{len(self.created):064d}"
        self.created[container_id] = kwargs["host_config"]["CgroupParent"]
        return {"Id": container_id}

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        self.inspected += 1
        return {"HostConfig": {"CgroupParent": self.created[container_id]}}

    def remove_container(self, container_id: str, **kwargs: Any) -> None:
        self.removed.append(container_id)

    def close(self) -> None:
        pass


def test_a_container_the_adapter_made_is_read_and_removed_without_an_inspect(tmp_path: Path) -> None:
    from dockworker.engine import ContainerSpec
    from dockworker.names import INSTALLATION_LABEL, TASK_LABEL

    engine = DockerEngine.__new__(DockerEngine)
    api = _RecordingEngine()
    engine._api = api  # type: ignore[assignment]
    engine._init_state()
    engine._accounting_checked = True
    layout = v1_layout(tmp_path)
    engine._parents = AccountingParents(layout)
    spec = ContainerSpec(image="img", command=["true"], labels={INSTALLATION_LABEL: "inst", TASK_LABEL: "t1"})
    container_id = engine.create(spec)
    parent = api.created[container_id].lstrip("/")
    write(layout.cpuacct_v1 / parent / "cpuacct.usage", "5000000\n")  # type: ignore[operator]
    write(tmp_path / "memory" / parent / "memory.max_usage_in_bytes", "4096\n")
    assert engine.usage(container_id) == ResourceUsage(cpu_time_ms=5, peak_memory_bytes=4096)
    for name in ("cpuacct.usage", "memory.max_usage_in_bytes"):  # rmdir of a fake tree's cgroup
        next(tmp_path.glob(f"*/{parent}/{name}")).unlink()
    engine.remove(container_id)
    assert api.removed == [container_id] and api.inspected == 0
    assert not list(tmp_path.glob(f"*/{parent}"))
    # one this adapter did not make (a runner restarted since) is inspected to find its parent
    other = engine.create(spec)
    engine._parent_of.clear()
    engine.remove(other)
    assert api.inspected == 1 and not list(tmp_path.glob(f"*/{api.created[other].lstrip('/')}"))
    # the installation's directory goes when the engine closes
    assert list(tmp_path.glob("*/dockworker/inst"))
    engine._streams = api  # type: ignore[assignment]
    engine.close()
    assert not list(tmp_path.glob("*/dockworker/inst"))
