"""A task container of the OCI backend runs under the seccomp program a Docker-path container
gets. The programs the kernel holds are read back (PTRACE_SECCOMP_GET_FILTER) and run, by a small
classic-BPF interpreter, on every syscall number of the profile's architectures (and the argument
values its conditions test), and compared:

* runc (which the Docker path runs under too) compiles the engine's profile for both: every
  decision must be the same. (runc lays its program out differently from one run to the next,
  so the bytes are not compared.)
* with crun, the OCI backend hands crun the profile compiled once (``seccomp.py``): the program
  must be byte for byte what crun compiles from the profile itself, and allow exactly what the
  Docker path's allows. (What it refuses, it refuses with the profile's EPERM, where runc also
  answers ENOSYS for syscalls newer than the profile.)"""

from __future__ import annotations

import base64
import ctypes
import functools
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockworker.engine import ContainerSpec, DockerEngine
from dockworker.engine.oci import OciEngine
from dockworker.engine.oci.policy import DOCKER_BUNDLES
from dockworker.engine.oci.seccomp import BPF_ANNOTATION
from tests.conftest import BUSYBOX_IMAGE

from . import oci_fixtures

runtime = oci_fixtures.runtime
oci_root = oci_fixtures.oci_root
oci_engine = oci_fixtures.oci_engine

pytestmark = pytest.mark.docker

PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_DETACH = 17
PTRACE_SECCOMP_GET_FILTER = 0x420C
WALL = 0x40000000
SOCK_FILTER_SIZE = 8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def seccomp_program(pid: int) -> bytes:
    """The seccomp program the process runs under (its only filter)."""
    assert _libc.ptrace(PTRACE_SEIZE, pid, None, None) == 0, os.strerror(ctypes.get_errno())
    try:
        assert _libc.ptrace(PTRACE_INTERRUPT, pid, None, None) == 0
        os.waitpid(pid, WALL)
        count = _libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, None, None)
        assert count > 0, os.strerror(ctypes.get_errno())
        buffer = ctypes.create_string_buffer(count * SOCK_FILTER_SIZE)
        assert _libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, None, buffer) == count
        assert _libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, ctypes.c_void_p(1), None) == -1  # only one
        return buffer.raw
    finally:
        _libc.ptrace(PTRACE_DETACH, pid, None, None)


SLEEPER = ContainerSpec(image=BUSYBOX_IMAGE, command=["sleep", "60"], memory_bytes=64 * 1024 * 1024)


@pytest.fixture
def docker_container(engine: DockerEngine) -> Iterator[int]:
    """A sleeping Docker-path container; yields its process's host pid."""
    container_id = engine.create(SLEEPER)
    try:
        engine.start(container_id)
        yield int((DOCKER_BUNDLES / container_id / "init.pid").read_text())
    finally:
        engine.remove(container_id)


def oci_program(oci: OciEngine, root: Path) -> tuple[bytes, bytes | None]:
    """The program an OCI-backend container runs under, and the one it was handed (if any)."""
    container_id = oci.create(SLEEPER)
    try:
        config = json.loads((root / "containers" / container_id / "config.json").read_text())
        handed = config["annotations"].get(BPF_ANNOTATION)
        oci.start(container_id)
        pid = int((root / "containers" / container_id / "pid").read_text())
        return seccomp_program(pid), None if handed is None else base64.b64decode(handed)
    finally:
        oci.remove(container_id)


AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7  # an architecture the profile does not list
X32_SYSCALL_BIT = 0x40000000
RET_ACTION = 0xFFFF0000
RET_ALLOW = 0x7FFF0000


def run_bpf(insns: list[tuple[int, int, int, int]], nr: int, arch: int, args: tuple[int, ...]) -> int:
    """What a seccomp program returns for one syscall (classic BPF, the subset seccomp allows)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args)
    a = x = pc = 0
    memory = [0] * 16
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        kind = code & 0x07
        if kind == 0x00:  # BPF_LD
            mode = code & 0xE0
            a = struct.unpack_from("<I", data, k)[0] if mode == 0x20 else memory[k] if mode == 0x60 else k
        elif kind == 0x01:  # BPF_LDX
            x = memory[k] if code & 0xE0 == 0x60 else k
        elif kind == 0x02:
            memory[k] = a
        elif kind == 0x03:
            memory[k] = x
        elif kind == 0x04:  # BPF_ALU
            operand = x if code & 0x08 else k
            results = {0x00: a + operand, 0x10: a - operand, 0x40: a | operand, 0x50: a & operand}
            results |= {0x60: a << operand, 0x70: a >> operand, 0xA0: a ^ operand, 0x80: -a}
            a = results[code & 0xF0] & 0xFFFFFFFF
        elif kind == 0x05:  # BPF_JMP
            operand = x if code & 0x08 else k
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            taken = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand, 0x40: bool(a & operand)}[op]
            pc += jt if taken else jf
        elif kind == 0x06:  # BPF_RET
            return a if code & 0x18 == 0x10 else k
        elif code & 0xF8 == 0x00:  # BPF_MISC TAX
            x = a
        else:  # TXA
            a = x


@functools.lru_cache(maxsize=1)
def _libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    return lib


def _resolve(arch: int, name: str) -> int:
    return int(_libseccomp().seccomp_syscall_resolve_name_arch(arch, name.encode()))


def inputs(profile: dict[str, Any]) -> list[tuple[int, int, tuple[int, ...]]]:
    """Every syscall number of the listed architectures (and a few past them, and another
    architecture), with zero arguments; the syscalls the profile's conditions test also with the
    values (and their neighbours) the conditions name."""
    numbers = [*range(-1, 512), 600, 1000, 4095]
    found: list[tuple[int, int, tuple[int, ...]]] = []
    for arch, prefix in ((AUDIT_ARCH_X86_64, 0), (AUDIT_ARCH_X86_64, X32_SYSCALL_BIT), (AUDIT_ARCH_I386, 0)):
        found += [(prefix | n if n >= 0 else n, arch, (0,) * 6) for n in numbers]
    found += [(n, AUDIT_ARCH_AARCH64, (0,) * 6) for n in (0, 56, 220)]
    for rule in profile["syscalls"]:
        conditions = rule.get("args") or []
        values: set[int] = set()
        for arg in conditions:
            value = int(arg["value"])
            values |= {value, value + 1, max(value - 1, 0), value | 1 << 32, value ^ 0xFFFF, 0xFFFFFFFF}
        for name in rule["names"] if conditions else ():
            for arch, prefix in (
                (AUDIT_ARCH_X86_64, 0),
                (AUDIT_ARCH_X86_64, X32_SYSCALL_BIT),
                (AUDIT_ARCH_I386, 0),
            ):
                nr = _resolve(arch, name)
                if nr >= 0:
                    for index in {int(arg["index"]) for arg in conditions}:
                        for value in values:
                            args = tuple(value if i == index else 0 for i in range(6))
                            found.append((prefix | nr, arch, args))
    return found


def decisions(program: bytes, cases: list[tuple[int, int, tuple[int, ...]]]) -> list[int]:
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), SOCK_FILTER_SIZE)]
    return [run_bpf(insns, nr, arch, args) for nr, arch, args in cases]


def test_the_seccomp_program_is_the_docker_paths(
    oci_engine: OciEngine,
    oci_root: Path,
    runtime: str,
    docker_container: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, handed = oci_program(oci_engine, oci_root)
    docker = seccomp_program(docker_container)
    profile = json.loads(next((oci_root / "policy").glob("docker-*.json")).read_text())["linux"]["seccomp"]
    cases = inputs(profile)
    ours_decisions, docker_decisions = decisions(ours, cases), decisions(docker, cases)
    assert ours_decisions.count(RET_ALLOW) > 300 * 3  # what programs need, on 3 architectures
    if runtime == "runc":
        assert handed is None
        assert ours_decisions == docker_decisions
        return
    assert handed == ours
    allowed = [case for case, d in zip(cases, ours_decisions, strict=True) if d & RET_ACTION == RET_ALLOW]
    allowed_by_docker = [
        case for case, d in zip(cases, docker_decisions, strict=True) if d & RET_ACTION == RET_ALLOW
    ]
    assert allowed == allowed_by_docker
    # crun: what it compiles from the engine's profile when it is not handed the program
    monkeypatch.setattr(oci_engine, "_runtime_annotations", lambda policy: {})
    compiled_by_crun, handed = oci_program(oci_engine, oci_root)
    assert handed is None
    assert ours == compiled_by_crun
