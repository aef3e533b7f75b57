"""Debian-based stacks. A minbase rootfs of the suite is made once with debootstrap and cached
as a tarball under the cache directory; each stack unpacks a copy of it and installs its
packages with apt-get in a chroot. The only network traffic is to the Debian mirror."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import InfrastructureError
from .catalog import BUILDER_VERSION, DEBIAN_SUITE, DEBIAN_VARIANT, Stack
from .commands import run_command
from .progress import Detail, ProgressCallback, scaled
from .rootfs import (
    add_worker_account,
    create_mount_points,
    extract_rootfs_tar,
    mounted_proc,
    scratch_dir,
    unmount,
    write_rootfs_tar,
)

DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
EXPECTED_MINBASE_PACKAGES = 90

# Installed in the base so that later apt-get installs skip documentation and translations.
DPKG_LEAN_CONFIG = """\
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
"""
# Keeps maintainer scripts from starting services in the chroot.
POLICY_RC_D = "#!/bin/sh\nexit 101\n"

_EMPTIED_DIRECTORIES = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "var/lib/apt/lists",
    "var/cache/apt",
)
_KEPT_LOCALE_FILES = frozenset({"locale.alias"})
# Written by debootstrap from the host or by the build: the engine provides its own at run time.
_HOST_SPECIFIC_FILES = ("etc/resolv.conf", "etc/hostname")
_MAN_SECTIONS = tuple(f"man{number}" for number in range(1, 9))
# (name, major, minor) of the character devices apt and maintainer scripts use.
_CHROOT_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9))


def debian_mirror(sources: Path | None = None) -> str:
    """The first URIs: of the host's deb822 Debian sources, as apt already uses it."""
    try:
        text = (sources or DEBIAN_SOURCES).read_text()
    except OSError:
        return DEFAULT_MIRROR
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "uris" and value.split():
            return value.split()[0].rstrip("/")
    return DEFAULT_MIRROR


def base_digest() -> str:
    recipe = {
        "builder": BUILDER_VERSION,
        "suite": DEBIAN_SUITE,
        "variant": DEBIAN_VARIANT,
        "machine": platform.machine(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def base_tarball_path(cache_dir: Path) -> Path:
    return cache_dir / "debian-base" / f"{DEBIAN_SUITE}-{DEBIAN_VARIANT}-{base_digest()[:16]}.tar"


def require_root() -> None:
    if os.geteuid() != 0:
        raise InfrastructureError("building a Debian-based stack needs root (debootstrap, chroot, mount)")


# --- the shared base -----------------------------------------------------------------------


def ensure_base(cache_dir: Path, mirror: str, on_progress: ProgressCallback) -> Path:
    """The cached base tarball, made with debootstrap first if there is none."""
    tarball = base_tarball_path(cache_dir)
    if tarball.exists():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(tarball.with_suffix(".lock")):
        if tarball.exists():  # another build made it while we waited
            return tarball
        with scratch_dir(tarball.parent, "base-") as work:
            root = work / "rootfs"
            root.mkdir()
            run_command(
                ["debootstrap", f"--variant={DEBIAN_VARIANT}", DEBIAN_SUITE, str(root), mirror],
                on_line=DebootstrapProgress(scaled(on_progress, 0.0, 0.9)),
            )
            on_progress("preparing the base system", 0.9)
            _prepare_base(root)
            on_progress("saving the base system to the cache", 0.95)
            partial = work / "base.tar"
            with partial.open("wb") as out:
                write_rootfs_tar(root, out)
            os.replace(partial, tarball)
    on_progress("base system ready", 1.0)
    return tarball


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _prepare_base(root: Path) -> None:
    dpkg_config = root / "etc/dpkg/dpkg.cfg.d"
    dpkg_config.mkdir(parents=True, exist_ok=True)
    (dpkg_config / "dockworker-lean").write_text(DPKG_LEAN_CONFIG)
    make_lean(root)


class DebootstrapProgress:
    """Turns debootstrap's "I: ..." lines into progress. Its phases, in order: retrieving and
    validating the packages, extracting them, unpacking, configuring. The package count is
    known once retrieval ends; until then it is estimated."""

    _PHASES = {
        "Retrieving": (0.0, 0.5),
        "Extracting": (0.5, 0.6),
        "Unpacking": (0.6, 0.8),
        "Configuring": (0.8, 1.0),
    }

    def __init__(
        self, on_progress: ProgressCallback, expected_packages: int = EXPECTED_MINBASE_PACKAGES
    ) -> None:
        self._on_progress = on_progress
        self._expected = expected_packages
        self._retrieved: set[str] = set()
        self._counts = dict.fromkeys(self._PHASES, 0)
        self._fraction = 0.0

    def __call__(self, line: str) -> None:
        if not line.startswith("I: "):
            return
        message = line[3:].strip()
        words = message.split()
        phase = words[0] if words else ""
        if phase == "Validating":
            phase = "Retrieving"
        if phase in self._PHASES and len(words) >= 2 and words[1] not in ("required", "base", "the"):
            self._fraction = max(self._fraction, self._advance(phase, words[1]))
        self._on_progress(Detail(f"debootstrap: {message}"), self._fraction)

    def _advance(self, phase: str, package: str) -> float:
        start, end = self._PHASES[phase]
        if phase == "Retrieving":
            if package in ("InRelease", "Release", "Packages"):
                return start
            self._retrieved.add(package)
            done, total = len(self._retrieved), max(self._expected, len(self._retrieved))
        else:
            self._counts[phase] += 1
            done, total = self._counts[phase], max(len(self._retrieved), self._counts[phase], 1)
        return start + (end - start) * done / total


# --- a stack on top of the base ------------------------------------------------------------


def build_debian_rootfs(stack: Stack, work: Path, *, cache_dir: Path, on_progress: ProgressCallback) -> Path:
    """Make the stack's rootfs under work and return its path."""
    require_root()
    mirror = debian_mirror()
    base_needed = not base_tarball_path(cache_dir).exists()
    install_start = 0.55 if base_needed else 0.1
    base = ensure_base(cache_dir, mirror, scaled(on_progress, 0.0, install_start))
    on_progress("unpacking the base system", install_start)
    root = work / "rootfs"
    extract_rootfs_tar(base, root)
    if stack.packages:
        install_packages(
            root,
            stack.packages,
            mirror,
            scaled(on_progress, install_start, 0.95),
            apt_cache=cache_dir / "apt",
        )
    on_progress("trimming the rootfs", 0.95)
    make_lean(root)
    add_worker_account(root, stack.uid, stack.gid)
    create_mount_points(root)
    return root


def install_packages(
    root: Path, packages: tuple[str, ...], mirror: str, on_progress: ProgressCallback, *, apt_cache: Path
) -> None:
    """apt-get install in a chroot. apt's package lists and downloaded packages live in
    apt_cache, shared by every stack build (bind-mounted, one build at a time), so a package
    common to several stacks is downloaded once; nothing of them stays in the image."""
    _write_inside(root, "etc/apt/sources.list", f"deb {mirror} {DEBIAN_SUITE} main\n")
    _write_inside(root, "etc/resolv.conf", HOST_RESOLV_CONF.read_text())
    policy = _write_inside(root, "usr/sbin/policy-rc.d", POLICY_RC_D, mode=0o755)
    _make_devices(root)
    # update-alternatives links manual pages there even though dpkg leaves them out (Java's do).
    for section in _MAN_SECTIONS:
        (root / "usr/share/man" / section).mkdir(parents=True, exist_ok=True)
    apt_cache.mkdir(parents=True, exist_ok=True)
    try:
        with (
            _exclusive_lock(apt_cache / "build.lock"),
            mounted_proc(root),
            _shared_apt_cache(root, apt_cache),
        ):
            on_progress("apt-get update", 0.0)
            _chroot_apt(root, ["update"], AptProgress(scaled(on_progress, 0.0, 0.15)))
            on_progress(f"installing {' '.join(packages)}", 0.15)
            install = ["install", "-y", "--no-install-recommends", *packages]
            _chroot_apt(root, install, AptProgress(scaled(on_progress, 0.15, 1.0)))
            # Packages no longer downloadable (superseded versions) leave the shared cache.
            _chroot_apt(root, ["autoclean"], None)
    finally:
        policy.unlink(missing_ok=True)


@contextlib.contextmanager
def _shared_apt_cache(root: Path, apt_cache: Path) -> Iterator[None]:
    mounted: list[Path] = []
    try:
        for source, inside in (
            (apt_cache / "lists", "var/lib/apt/lists"),
            (apt_cache / "archives", "var/cache/apt/archives"),
        ):
            target = root / inside
            (source / "partial").mkdir(parents=True, exist_ok=True)
            target.mkdir(parents=True, exist_ok=True)
            run_command(["mount", "--bind", str(source), str(target)])
            mounted.append(target)
        yield
    finally:
        for mount_point in reversed(mounted):
            unmount(mount_point)


def _write_inside(root: Path, relative: str, text: str, *, mode: int = 0o644) -> Path:
    # Replace rather than write through: a symlink in the rootfs may point outside it.
    path = root / relative
    path.unlink(missing_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _chroot_apt(root: Path, arguments: list[str], progress: AptProgress | None) -> None:
    options = ["-o", "Dpkg::Use-Pty=0", "-o", "APT::Color=0"]
    run_command(["chroot", str(root), "apt-get", *options, *arguments], on_line=progress)


def _make_devices(root: Path) -> None:
    """The few device nodes a chroot needs (left out of every tarball: the engine provides /dev)."""
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    for name, major, minor in _CHROOT_DEVICES:
        node = dev / name
        if not node.exists():
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            node.chmod(0o666)


class AptProgress:
    """Reads apt-get's plain output: the "N upgraded, M newly installed" summary gives the
    package count, then each package is fetched ("Get:"), unpacked and set up. Fetching is the
    first 40% of the install, unpacking the next 30%, setting up the rest.

    (apt's machine-readable APT::Status-Fd is not used: sharing the output pipe with it makes
    maintainer scripts' writes fail, e.g. ca-certificates' postinst.)"""

    _PHASES = {"Get:": (0.0, 0.4), "Unpacking": (0.4, 0.7), "Setting up": (0.7, 1.0)}

    def __init__(self, on_progress: ProgressCallback) -> None:
        self._on_progress = on_progress
        self._total = 0
        self._counts = dict.fromkeys(self._PHASES, 0)
        self._fraction = 0.0

    def __call__(self, line: str) -> None:
        words = line.split()
        if len(words) >= 6 and words[1].rstrip(",") == "upgraded" and words[3] == "newly":
            with contextlib.suppress(ValueError):
                self._total = int(words[0]) + int(words[2])
            return
        phase = next((p for p in self._PHASES if line.startswith(p)), None)
        if phase is None:
            return
        self._counts[phase] += 1
        start, end = self._PHASES[phase]
        total = max(self._total, self._counts[phase])
        self._fraction = max(self._fraction, start + (end - start) * self._counts[phase] / total)
        self._on_progress(Detail(f"apt: {line.strip()[:100]}"), self._fraction)


# --- trimming ------------------------------------------------------------------------------


def make_lean(root: Path) -> None:
    """Remove what a task never needs: documentation, translations, apt's lists and caches,
    logs, and the host's network files."""
    for directory in _EMPTIED_DIRECTORIES:
        _empty_directory(root / directory)
    _empty_directory(root / "usr/share/locale", keep=_KEPT_LOCALE_FILES)
    for old in (root / "var/cache/debconf").glob("*-old"):
        old.unlink()
    _remove_log_files(root / "var/log")
    for relative in _HOST_SPECIFIC_FILES:
        (root / relative).unlink(missing_ok=True)


def _empty_directory(directory: Path, keep: frozenset[str] = frozenset()) -> None:
    if not directory.is_dir() or directory.is_symlink():
        return
    for entry in directory.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _remove_log_files(log_dir: Path) -> None:
    if not log_dir.is_dir():
        return
    for path in log_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.unlink()
