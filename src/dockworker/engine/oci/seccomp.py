"""Docker's seccomp profile (the ``linux.seccomp`` section of the spec the engine generates)
compiled once into the BPF program the kernel loads, with the host's libseccomp, the library
the runtimes compile it with.

Compiling the profile costs a runtime 12-20 ms per container start on this class of host. crun
accepts the program ready-made (the ``run.oci.seccomp_bpf_data`` annotation: it then loads that
program instead of compiling the section), so the OCI backend compiles it once per sandbox
policy and hands it to every container. The translation follows the OCI semantics the runtimes
implement (the default action, every listed architecture, each rule's action for each known
syscall name, its argument conditions ANDed, or one rule per condition when two conditions test
the same argument), and the integration tests check that the program a container runs under is
byte for byte the one crun compiles from the section itself."""

from __future__ import annotations

import ctypes
import errno
import os
from functools import lru_cache
from typing import Any

from ...errors import InfrastructureError

BPF_ANNOTATION = "run.oci.seccomp_bpf_data"
DEFAULT_ERRNO = errno.EPERM
MAX_ARGS = 6
_ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
_WITH_VALUE = {"SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_TRACE": 0x7FF00000}
_OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
_EEXIST = -errno.EEXIST
_UNKNOWN_SYSCALL = -1


class SeccompUnavailable(InfrastructureError):
    """libseccomp cannot be used here."""


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp is not installed: {exc}") from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _action(name: str, value: int | None) -> int:
    if name in _WITH_VALUE:
        return _WITH_VALUE[name] | ((DEFAULT_ERRNO if value is None else value) & 0xFFFF)
    if name not in _ACTIONS:
        raise SeccompUnavailable(f"unsupported seccomp action {name}")
    return _ACTIONS[name]


def _conditions(args: list[dict[str, Any]]) -> list[list[_ArgCmp]]:
    """The rules one syscall entry becomes: one with every condition, or one per condition when
    two conditions test the same argument (they could never hold together)."""
    compares = []
    for arg in args:
        index = int(arg["index"])
        if index >= MAX_ARGS:
            raise SeccompUnavailable(f"seccomp condition on argument {index}")
        compares.append(_ArgCmp(index, _OPERATORS[arg["op"]], int(arg["value"]), int(arg.get("valueTwo", 0))))
    indexes = [c.arg for c in compares]
    if len(set(indexes)) == len(indexes):
        return [compares]
    return [[c] for c in compares]


def compile_profile(profile: dict[str, Any]) -> bytes:
    """The BPF program (``struct sock_filter`` array) for an OCI ``linux.seccomp`` section."""
    lib = _library()
    default = _action(str(profile["defaultAction"]), profile.get("defaultErrnoRet"))
    context = lib.seccomp_init(default)
    if not context:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        for arch in profile.get("architectures") or []:
            token = lib.seccomp_arch_resolve_name(str(arch).removeprefix("SCMP_ARCH_").lower().encode())
            if token == 0:
                raise SeccompUnavailable(f"unknown seccomp architecture {arch}")
            result = lib.seccomp_arch_add(context, token)
            if result not in (0, _EEXIST):
                raise SeccompUnavailable(f"seccomp_arch_add({arch}) failed: {result}")
        for rule in profile.get("syscalls") or []:
            action = _action(str(rule["action"]), rule.get("errnoRet"))
            if action == default:
                continue
            for name in rule.get("names") or []:
                number = lib.seccomp_syscall_resolve_name(str(name).encode())
                if number == _UNKNOWN_SYSCALL:
                    continue  # a syscall this libseccomp does not know: left to the default
                for group in _conditions(list(rule.get("args") or [])):
                    array = (_ArgCmp * len(group))(*group) if group else None
                    result = lib.seccomp_rule_add_array(context, action, number, len(group), array)
                    if result != 0:
                        raise SeccompUnavailable(f"seccomp rule for {name} failed: {result}")
        return _export(lib, context)
    finally:
        lib.seccomp_release(context)


def _export(lib: ctypes.CDLL, context: int) -> bytes:
    fd = os.memfd_create("dockworker-seccomp", os.MFD_CLOEXEC)
    try:
        result = lib.seccomp_export_bpf(context, fd)
        if result != 0:
            raise SeccompUnavailable(f"seccomp_export_bpf failed: {result}")
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
