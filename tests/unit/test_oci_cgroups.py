"""Where the OCI backend's cgroups live, how they are removed, and how an OOM is read on cgroup
v2 (the cgroup v1 path, this host's, is exercised for real by the integration tier); and the
seccomp compiler's translation of an OCI profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockworker.engine.cgroupfs import CgroupLayout
from dockworker.engine.oci.cgroups import TaskCgroups, device_rule, scope_container_ids
from dockworker.engine.oci.seccomp import SeccompUnavailable, compile_profile
from dockworker.errors import InfrastructureError
from tests.conftest import require

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_a_hybrid_host_keeps_memory_on_v1() -> None:
    layout = CgroupLayout.detect(HYBRID)
    assert layout.memory_v1 == Path("/sys/fs/cgroup/memory") and not layout.memory_on_v2
    assert layout.unified == Path("/sys/fs/cgroup/unified")
    assert len(layout.hierarchies()) == 4


def test_a_v2_host_has_one_hierarchy() -> None:
    layout = CgroupLayout.detect(UNIFIED)
    assert layout.memory_on_v2 and layout.hierarchies() == (Path("/sys/fs/cgroup"),)


def test_v2_oom_kills_are_read_from_the_parents_events(tmp_path: Path) -> None:
    layout = CgroupLayout(v1=(), memory_v1=None, unified=tmp_path)
    cgroups = TaskCgroups(layout, "scope", "c" * 64)
    assert cgroups.runtime_path == "/dockworker-oci/scope/" + "c" * 64 + "/task"
    parent = tmp_path / "dockworker-oci" / "scope" / ("c" * 64)
    parent.mkdir(parents=True)
    assert cgroups.oom_kills_v2() == 0
    (parent / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    assert cgroups.oom_kills_v2() == 2
    assert scope_container_ids(layout, "scope") == {"c" * 64}
    (parent / "memory.events").unlink()
    cgroups.remove()
    assert not parent.exists()
    cgroups.remove()  # already gone is fine


def test_a_cgroup_still_in_use_is_reported(tmp_path: Path) -> None:
    layout = CgroupLayout(v1=(tmp_path,), memory_v1=tmp_path, unified=None)
    cgroups = TaskCgroups(layout, "scope", "d" * 64)
    busy = tmp_path / "dockworker-oci" / "scope" / ("d" * 64) / "task"
    busy.mkdir(parents=True)
    (busy / "cgroup.procs").write_text("1\n")  # a directory rmdir refuses, as a busy cgroup
    with pytest.raises(InfrastructureError):
        cgroups.remove()


PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "architectures": ["SCMP_ARCH_X86_64"],
    "syscalls": [
        {"names": ["read", "write", "no_such_syscall"], "action": "SCMP_ACT_ALLOW"},
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}],
        },
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
    ],
}


def test_a_profile_compiles_to_a_bpf_program() -> None:
    try:
        program = compile_profile(PROFILE)
    except SeccompUnavailable as exc:
        require(False, str(exc))  # skipped on a host without it, failed in CI
    assert len(program) % 8 == 0 and len(program) > 8 * 5
    assert compile_profile(PROFILE) == program  # deterministic: one program per policy
    # two conditions on one argument are two rules (either may hold), as listing them apart
    one, two = ({"index": 0, "value": v, "op": "SCMP_CMP_EQ"} for v in (1, 2))
    together = {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [one, two]}
    apart = [{**together, "args": [one]}, {**together, "args": [two]}]
    compiled_together = compile_profile({**PROFILE, "syscalls": [*PROFILE["syscalls"], together]})
    assert compiled_together == compile_profile({**PROFILE, "syscalls": [*PROFILE["syscalls"], *apart]})
    assert compiled_together != program


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(SeccompUnavailable):
        compile_profile({**PROFILE, "defaultAction": "SCMP_ACT_SOMETHING"})


def test_device_rules_are_written_as_cgroup_v1_takes_them() -> None:
    assert device_rule({"allow": False, "access": "rwm"}) == ("devices.deny", "a")
    assert device_rule({"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}) == (
        "devices.allow",
        "c 1:3 rwm",
    )
    assert device_rule({"allow": False, "type": "c", "major": 10, "minor": 229, "access": "rwm"}) == (
        "devices.deny",
        "c 10:229 rwm",
    )
    assert device_rule({"allow": True, "type": "b", "access": "m"}) == ("devices.allow", "b *:* m")


def test_the_controllers_are_found_by_name_not_by_their_files() -> None:
    layout = CgroupLayout.detect(HYBRID)
    assert layout.v1_of("memory") == Path("/sys/fs/cgroup/memory")
    assert layout.v1_of("name=systemd") == Path("/sys/fs/cgroup/systemd")
    assert layout.v1_of("pids") is None and layout.v1_of("rw") is None


def test_the_runtime_is_moved_out_only_while_it_is_in_the_containers_cgroup(tmp_path: Path) -> None:
    pids, memory = tmp_path / "pids", tmp_path / "memory"
    layout = CgroupLayout(
        v1=(pids, memory),
        memory_v1=memory,
        unified=None,
        v1_controllers=(("pids", pids), ("memory", memory)),
    )
    cgroups = TaskCgroups(layout, "scope", "e" * 64)
    for hierarchy in (pids, memory):
        (hierarchy / cgroups.relative).mkdir(parents=True)
        (hierarchy / cgroups.relative.parent / "cgroup.procs").write_text("")
    (pids / cgroups.relative / "cgroup.procs").write_text("41\n42\n")
    cgroups.move_out(7)  # ended, its pid elsewhere now: left alone
    assert [(h / cgroups.relative.parent / "cgroup.procs").read_text() for h in (pids, memory)] == ["", ""]
    cgroups.move_out(42)
    assert [(h / cgroups.relative.parent / "cgroup.procs").read_text() for h in (pids, memory)] == [
        "42",
        "42",
    ]
