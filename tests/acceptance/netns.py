"""Runner "hosts" made of Linux network namespaces, made and removed by the test.

A :class:`RunnerHost` is a network namespace whose only link is a veth pair to this host, with a
/30 of 10.213.0.0/16 chosen here (an address in use on this machine is never chosen): the
namespace's end, and this host's end, which the API servers listen on. There is no default
route in the namespace, so it reaches nothing but that link: not PostgreSQL (which listens on
this host's loopback), not the rest of the network. Processes started in it (``ip netns exec``)
share this host's filesystem, hence the Docker engine's unix socket and the data directories.

Nothing is sent beyond the link: the test talks to the API servers at this host's end of it."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

IP_TIMEOUT_S = 20.0
# the private range the tests take their links from (never used beyond them)
PREFIX = "10.213"
_numbers = itertools.count()


class NetnsError(Exception):
    """An ``ip`` command of the test failed."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    result = subprocess.run(
        [ip, *args],
        capture_output=True,
        text=True,
        timeout=IP_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


@functools.cache
def netns_unsupported() -> str | None:
    """Why runner hosts cannot be made here (None: they can): ``ip netns`` needs root and a
    kernel with network namespaces and veth."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None and not os.path.exists("/usr/sbin/ip"):
        return "no 'ip' command (iproute2)"
    try:
        with runner_host("probe"):
            pass
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot make a network namespace with a veth link: {exc}"
    return None


@dataclass(frozen=True)
class RunnerHost:
    namespace: str
    host_interface: str
    host_ip: str  # this host's end of the link: where the API servers listen
    ns_ip: str  # the namespace's end

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: the pid is its own)."""
        ip = shutil.which("ip") or "/usr/sbin/ip"
        return [ip, "netns", "exec", self.namespace, *argv]

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def routes(self) -> list[str]:
        return _ip("-n", self.namespace, "-4", "route", "show").stdout.splitlines()

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.namespace, check=False).stdout.split()]


def _addresses_in_use() -> str:
    return _ip("-o", "-4", "addr", "show").stdout


def _free_subnet() -> tuple[str, str]:
    """A /30 of 10.213.0.0/16 that no interface of this host uses."""
    used = _addresses_in_use()
    for _ in range(200):
        third, fourth = random.randrange(1, 255), random.randrange(0, 64) * 4
        if f" {PREFIX}.{third}." not in used:
            return f"{PREFIX}.{third}.{fourth + 1}", f"{PREFIX}.{third}.{fourth + 2}"
    raise NetnsError(f"no free /30 in {PREFIX}.0.0/16")


@contextlib.contextmanager
def runner_host(tag: str) -> Iterator[RunnerHost]:
    """A namespace with its veth link, removed on the way out however the test went: the
    processes still in it are killed first (they would keep it, and its link, alive)."""
    number = next(_numbers)
    suffix = f"{os.getpid() % 100000}x{number}"
    namespace = f"dw-{tag}-{suffix}"
    host_if, ns_if = f"dwh{suffix}"[:15], f"dwn{suffix}"[:15]
    host_ip, ns_ip = _free_subnet()
    made = False
    try:
        _ip("netns", "add", namespace)
        made = True
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", namespace)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", namespace, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("-n", namespace, "link", "set", ns_if, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        yield RunnerHost(namespace, host_if, host_ip, ns_ip)
    finally:
        if made:
            _remove(namespace)
        _ip("link", "del", host_if, check=False)


def _remove(namespace: str) -> None:
    host = RunnerHost(namespace, "", "", "")
    deadline = time.monotonic() + 10
    while pids := host.pids():
        for pid in pids:  # started by this test in its own namespace
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    _ip("netns", "del", namespace, check=False)
