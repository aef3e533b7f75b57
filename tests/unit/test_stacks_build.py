"""Stack builds without Docker: a fake engine records what would be imported, and the
Debian build runs against fake debootstrap/chroot/mount commands."""

from __future__ import annotations

import io
import os
import struct
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, cast

import pytest

from dockworker.engine.adapter import DockerEngine
from dockworker.errors import InfrastructureError, TaskSetupError
from dockworker.stacks import STACKS, Stack, build_stack, busybox, debian, rootfs, stack_status
from dockworker.stacks.build import RECIPE_LABEL, image_changes
from dockworker.stacks.commands import run_command

# --- a fake engine -------------------------------------------------------------------------


class FakeEngine:
    def __init__(self) -> None:
        self.images: dict[str, tuple[str, dict[str, str]]] = {}  # tag -> (id, labels)
        self.imports: list[tuple[str, bytes, list[str]]] = []
        self.removed: list[str] = []
        self.in_use: set[str] = set()

    def image_labels(self, ref: str) -> dict[str, str] | None:
        return dict(self.images[ref][1]) if ref in self.images else None

    def image_id(self, ref: str) -> str | None:
        return self.images[ref][0] if ref in self.images else None

    def import_image(self, tar: IO[bytes], *, repository: str, tag: str, changes: list[str]) -> None:
        ref = f"{repository}:{tag}"
        labels = dict(c.removeprefix("LABEL ").split("=", 1) for c in changes if c.startswith("LABEL "))
        self.images[ref] = (f"sha256:{len(self.imports)}", labels)
        self.imports.append((ref, tar.read(), changes))

    def remove_image(self, ref: str) -> None:
        if ref in self.in_use:
            raise TaskSetupError("remove image: conflict: image is being used by a running container")
        self.removed.append(ref)

    def as_engine(self) -> DockerEngine:
        return cast(DockerEngine, self)


def members(tar_bytes: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {member.name.removeprefix("./"): member for member in tar.getmembers()}


def read_member(tar_bytes: bytes, name: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        extracted = tar.extractfile(name)
        assert extracted is not None
        return extracted.read().decode()


def leftovers(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.glob("build-*")) + sorted(
        p.name for p in cache_dir.glob("debian-base/base-*")
    )


# --- ELF inspection ------------------------------------------------------------------------


def fake_elf(path: Path, *, interpreter: bool, big_endian: bool = False, bits: int = 64) -> Path:
    endian = ">" if big_endian else "<"
    if bits == 64:
        header_format, phentsize, phoff = endian + "HHIQQQIHHHHHH", 56, 64
    else:
        header_format, phentsize, phoff = endian + "HHIIIIIHHHHHH", 32, 52
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 2 if big_endian else 1, 1]) + bytes(9)
    program_types = [1, 3, 1] if interpreter else [1, 1]  # PT_LOAD, PT_INTERP
    header = struct.pack(
        header_format, 2, 62, 1, 0, phoff, 0, 0, phoff, phentsize, len(program_types), 0, 0, 0
    )
    program_headers = b"".join(struct.pack(endian + "I", t) + bytes(phentsize - 4) for t in program_types)
    path.write_bytes(ident + header + program_headers)
    return path


@pytest.mark.parametrize(("bits", "big_endian"), [(64, False), (32, False), (64, True), (32, True)])
def test_static_elf_is_accepted(tmp_path: Path, bits: int, big_endian: bool) -> None:
    path = fake_elf(tmp_path / "elf", interpreter=False, bits=bits, big_endian=big_endian)
    assert busybox.static_elf_problem(path) is None


@pytest.mark.parametrize(("bits", "big_endian"), [(64, False), (32, True)])
def test_dynamic_elf_is_refused(tmp_path: Path, bits: int, big_endian: bool) -> None:
    path = fake_elf(tmp_path / "elf", interpreter=True, bits=bits, big_endian=big_endian)
    assert "dynamically linked" in (busybox.static_elf_problem(path) or "")


def test_non_elf_files_are_refused(tmp_path: Path) -> None:
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\necho hi\n")
    assert busybox.static_elf_problem(script) == "not an ELF file"
    truncated = tmp_path / "truncated"
    truncated.write_bytes(fake_elf(tmp_path / "elf", interpreter=False).read_bytes()[:40])
    assert busybox.static_elf_problem(truncated) == "a truncated ELF file"


def test_missing_busybox_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(InfrastructureError, match="missing: install the Debian package busybox-static"):
        busybox.check_host_busybox(tmp_path / "busybox")


def test_dynamic_busybox_fails_clearly(tmp_path: Path) -> None:
    path = fake_elf(tmp_path / "busybox", interpreter=True)
    with pytest.raises(InfrastructureError, match=r"dynamically linked.*busybox-static"):
        busybox.check_host_busybox(path)


# --- the busybox stack ---------------------------------------------------------------------

# In CI (scripts/setup.sh installs busybox-static) these always run, and fail if it is missing.
needs_host_busybox = pytest.mark.skipif(
    os.environ.get("CI") != "true"
    and (not busybox.HOST_BUSYBOX.is_file() or busybox.static_elf_problem(busybox.HOST_BUSYBOX) is not None),
    reason="needs the static /bin/busybox of the busybox-static package",
)


@needs_host_busybox
def test_busybox_build_imports_a_complete_rootfs(tmp_path: Path) -> None:
    engine = FakeEngine()
    messages: list[tuple[str, float | None]] = []
    stack = STACKS["busybox"]

    assert build_stack(
        stack, engine.as_engine(), cache_dir=tmp_path, on_progress=lambda m, f: messages.append((m, f))
    )

    (ref, tar_bytes, changes) = engine.imports[0]
    assert ref == "dockworker/stack-busybox:1.35"
    assert changes == image_changes(stack)
    found = members(tar_bytes)
    assert found["bin/busybox"].isfile()
    assert found["bin/busybox"].mode == 0o755
    assert found["bin/busybox"].size == busybox.HOST_BUSYBOX.stat().st_size
    for applet in ("bin/sh", "bin/ls", "usr/bin/env", "usr/bin/awk"):
        assert found[applet].issym()
        assert found[applet].linkname == "/bin/busybox"
    assert "linuxrc" not in found
    assert found["tmp"].isdir()
    assert found["tmp"].mode == 0o1777
    assert found["mnt/code"].isdir()
    assert found["mnt/task"].isdir()
    assert all(member.uid == 0 and member.gid == 0 for member in found.values())
    assert "worker:x:1000:1000:worker:/tmp:/bin/sh" in read_member(tar_bytes, "etc/passwd").splitlines()
    assert "root:x:0:0:root:/root:/bin/sh" in read_member(tar_bytes, "etc/passwd").splitlines()
    assert "worker:x:1000:" in read_member(tar_bytes, "etc/group").splitlines()
    assert "localhost" in read_member(tar_bytes, "etc/hosts")
    assert len(tar_bytes) < 3 * 1024 * 1024
    assert messages[-1][1] == 1.0
    assert leftovers(tmp_path) == []


def test_image_changes_set_labels_environment_and_user() -> None:
    stack = STACKS["python"]
    changes = image_changes(stack)
    assert "LABEL dockworker.stack=python" in changes
    assert "LABEL dockworker.stack.version=3.11" in changes
    assert f"LABEL dockworker.stack.recipe={stack.recipe_digest()}" in changes
    assert "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in changes
    assert "ENV LANG=C.UTF-8" in changes
    assert "USER 1000:1000" in changes


@needs_host_busybox
def test_an_up_to_date_image_is_not_rebuilt(tmp_path: Path) -> None:
    engine = FakeEngine()
    stack = STACKS["busybox"]
    assert build_stack(stack, engine.as_engine(), cache_dir=tmp_path)
    assert not build_stack(stack, engine.as_engine(), cache_dir=tmp_path)
    assert len(engine.imports) == 1


@needs_host_busybox
def test_force_rebuilds_and_removes_the_replaced_image(tmp_path: Path) -> None:
    engine = FakeEngine()
    stack = STACKS["busybox"]
    build_stack(stack, engine.as_engine(), cache_dir=tmp_path)
    assert build_stack(stack, engine.as_engine(), cache_dir=tmp_path, force=True)
    assert len(engine.imports) == 2
    assert engine.removed == ["sha256:0"]


@needs_host_busybox
def test_an_outdated_image_is_rebuilt_even_when_the_old_one_is_in_use(tmp_path: Path) -> None:
    engine = FakeEngine()
    stack = STACKS["busybox"]
    engine.images[stack.image] = ("sha256:old", {RECIPE_LABEL: "something else"})
    engine.in_use.add("sha256:old")
    assert build_stack(stack, engine.as_engine(), cache_dir=tmp_path)
    assert stack_status(stack, engine.as_engine()) == "built"


def test_stack_status() -> None:
    engine = FakeEngine()
    stack = STACKS["python"]
    assert stack_status(stack, engine.as_engine()) == "missing"
    engine.images[stack.image] = ("sha256:1", {RECIPE_LABEL: "0" * 64})
    assert stack_status(stack, engine.as_engine()) == "outdated"
    engine.images[stack.image] = ("sha256:1", {})
    assert stack_status(stack, engine.as_engine()) == "outdated"
    engine.images[stack.image] = ("sha256:1", {RECIPE_LABEL: stack.recipe_digest()})
    assert stack_status(stack, engine.as_engine()) == "built"


def test_a_failed_busybox_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(busybox, "HOST_BUSYBOX", tmp_path / "no-busybox")
    engine = FakeEngine()
    with pytest.raises(InfrastructureError, match="busybox-static"):
        build_stack(STACKS["busybox"], engine.as_engine(), cache_dir=tmp_path / "cache")
    assert engine.imports == []
    assert leftovers(tmp_path / "cache") == []


# --- rootfs helpers ------------------------------------------------------------------------


def test_rootfs_tar_keeps_links_and_skips_special_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/file").write_text("content")
    os.link(root / "etc/file", root / "etc/hardlink")
    (root / "etc/symlink").symlink_to("file")
    os.mkfifo(root / "fifo")
    out = io.BytesIO()
    rootfs.write_rootfs_tar(root, out)
    found = members(out.getvalue())
    assert set(found) == {"etc", "etc/file", "etc/hardlink", "etc/symlink"}
    assert found["etc/hardlink"].islnk()
    assert found["etc/hardlink"].linkname == "etc/file"
    assert found["etc/symlink"].issym()
    assert all(member.uname == "" and member.gname == "" for member in found.values())


def fill_scratch_dir_then_fail(parent: Path) -> None:
    with rootfs.scratch_dir(parent, "build-") as work:
        (work / "sub").mkdir()
        (work / "sub/file").write_text("x")
        raise RuntimeError("boom")


def test_scratch_dir_is_removed_after_a_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        fill_scratch_dir_then_fail(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_mountinfo_escapes_are_decoded() -> None:
    assert rootfs._unescape_mountinfo(r"/tmp/with\040space\134x") == "/tmp/with space\\x"


def test_nothing_is_mounted_below_a_fresh_directory(tmp_path: Path) -> None:
    assert rootfs.mounts_below(tmp_path) == []


def make_etc(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:")  # no final newline
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")


def test_worker_account_is_added_once(tmp_path: Path) -> None:
    make_etc(tmp_path)
    rootfs.add_worker_account(tmp_path, 1000, 1000)
    rootfs.add_worker_account(tmp_path, 1000, 1000)
    assert (tmp_path / "etc/passwd").read_text().splitlines() == [
        "root:x:0:0:root:/root:/bin/bash",
        "worker:x:1000:1000:worker:/tmp:/bin/sh",
    ]
    assert (tmp_path / "etc/group").read_text().splitlines() == ["root:x:0:", "worker:x:1000:"]
    assert (tmp_path / "etc/shadow").read_text().splitlines()[-1].split(":")[:2] == ["worker", "*"]
    assert len((tmp_path / "etc/shadow").read_text().splitlines()[-1].split(":")) == 9
    assert not (tmp_path / "etc/gshadow").exists()


# --- Debian pieces -------------------------------------------------------------------------


def test_mirror_is_the_first_uri_of_the_debian_sources(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/ http://other.example/debian\n"
        "Suites: bookworm\n\nTypes: deb\nURIs: http://security.example/debian-security\n"
    )
    assert debian.debian_mirror(sources) == "http://mirror.example/debian"


def test_mirror_falls_back_to_deb_debian_org(tmp_path: Path) -> None:
    assert debian.debian_mirror(tmp_path / "missing") == "http://deb.debian.org/debian"
    (tmp_path / "empty").write_text("Types: deb\n")
    assert debian.debian_mirror(tmp_path / "empty") == "http://deb.debian.org/debian"


DEBOOTSTRAP_OUTPUT = [
    "I: Target architecture can be executed",
    "I: Retrieving InRelease ",
    "I: Checking Release signature",
    "I: Retrieving Packages ",
    "I: Validating Packages ",
    "I: Resolving dependencies of required packages...",
    "I: Retrieving libc6 2.36-9",
    "I: Validating libc6 2.36-9",
    "I: Retrieving dash 0.5.12-2",
    "I: Validating dash 0.5.12-2",
    "I: Chosen extractor for .deb packages: dpkg-deb",
    "I: Extracting libc6...",
    "I: Extracting dash...",
    "I: Installing core packages...",
    "I: Unpacking required packages...",
    "I: Unpacking libc6:amd64...",
    "I: Unpacking dash...",
    "I: Configuring required packages...",
    "W: some warning",
    "I: Configuring libc6:amd64...",
    "I: Configuring dash...",
    "I: Configuring the base system...",
    "I: Base system installed successfully.",
]


def test_debootstrap_progress_advances_through_the_phases() -> None:
    reports: list[tuple[str, float | None]] = []
    parse = debian.DebootstrapProgress(lambda m, f: reports.append((m, f)), expected_packages=2)
    for line in DEBOOTSTRAP_OUTPUT:
        parse(line)
    fractions = [f for _, f in reports]
    assert len(reports) == len(DEBOOTSTRAP_OUTPUT) - 1  # the W: line is not a progress message
    assert fractions == sorted(cast(list[float], fractions))
    assert dict(reports)["debootstrap: Validating dash 0.5.12-2"] == pytest.approx(0.5)
    assert dict(reports)["debootstrap: Extracting dash..."] == pytest.approx(0.6)
    assert dict(reports)["debootstrap: Unpacking dash..."] == pytest.approx(0.8)
    assert fractions[-1] == pytest.approx(1.0)


def test_apt_progress_reads_the_plain_output() -> None:
    reports: list[tuple[str, float | None]] = []
    parse = debian.AptProgress(lambda m, f: reports.append((m, f)))
    for line in [
        "Reading package lists...",
        "0 upgraded, 2 newly installed, 0 to remove and 0 not upgraded.",
        "Get:1 http://deb.debian.org/debian bookworm/main amd64 libpython3 amd64 3.11 [1 kB]",
        "Get:2 http://deb.debian.org/debian bookworm/main amd64 python3 amd64 3.11 [1 kB]",
        "Fetched 2 kB in 0s (100 kB/s)",
        "Unpacking libpython3:amd64 (3.11) ...",
        "Unpacking python3 (3.11) ...",
        "Setting up libpython3:amd64 (3.11) ...",
        "Setting up python3 (3.11) ...",
        "Processing triggers for libc-bin (2.36-9) ...",
    ]:
        parse(line)
    assert [message for message, _ in reports][:2] == [
        "apt: Get:1 http://deb.debian.org/debian bookworm/main amd64 libpython3 amd64 3.11 [1 kB]",
        "apt: Get:2 http://deb.debian.org/debian bookworm/main amd64 python3 amd64 3.11 [1 kB]",
    ]
    assert [fraction for _, fraction in reports] == pytest.approx([0.2, 0.4, 0.55, 0.7, 0.85, 1.0])


def test_apt_progress_without_a_summary_never_goes_back() -> None:
    fractions: list[float | None] = []
    parse = debian.AptProgress(lambda m, f: fractions.append(f))
    for line in ["Get:1 a", "Get:2 b", "Unpacking a", "Setting up a"]:
        parse(line)
    assert fractions == sorted(cast(list[float], fractions))
    assert fractions[-1] == pytest.approx(1.0)


def make_debootstrapped_tree(root: Path) -> None:
    make_etc(root)
    directories = ("tmp", "proc", "dev", "etc/apt", "usr/bin", "usr/sbin", "var/cache/debconf", "var/log/apt")
    for directory in directories:
        (root / directory).mkdir(parents=True, exist_ok=True)
    files = {
        "usr/bin/sh": "shell",
        "usr/share/doc/libc6/copyright": "copyright",
        "usr/share/man/man1/ls.1.gz": "man",
        "usr/share/info/dir": "info",
        "usr/share/locale/de/LC_MESSAGES/dpkg.mo": "mo",
        "usr/share/locale/locale.alias": "alias",
        "var/lib/apt/lists/deb.debian.org_Packages": "lists",
        "var/cache/apt/pkgcache.bin": "cache",
        "var/cache/apt/archives/libc6.deb": "deb",
        "var/cache/debconf/config.dat-old": "old",
        "var/cache/debconf/config.dat": "new",
        "var/log/dpkg.log": "log",
        "var/log/apt/history.log": "log",
        "etc/resolv.conf": "nameserver 192.0.2.1\n",
        "etc/hostname": "buildhost\n",
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)


def test_make_lean(tmp_path: Path) -> None:
    make_debootstrapped_tree(tmp_path)
    debian.make_lean(tmp_path)
    remaining = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.is_dir()}
    assert remaining == {
        "etc/passwd",
        "etc/group",
        "etc/shadow",
        "usr/bin/sh",
        "usr/share/locale/locale.alias",
        "var/cache/debconf/config.dat",
    }
    assert (tmp_path / "usr/share/doc").is_dir()
    assert (tmp_path / "var/log/apt").is_dir()


class FakeCommands:
    """Stands in for debootstrap, chroot, mount and umount; tar runs for real."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, argv: Sequence[str], *, on_line: Callable[[str], None] | None = None) -> None:
        argv = list(argv)
        if argv[0] == "tar":
            run_command(argv, on_line=on_line)
            return
        self.calls.append(argv)
        if self.fail_on is not None and self.fail_on in argv:
            raise InfrastructureError(f"{argv[0]} failed")
        if argv[0] == "debootstrap":
            make_debootstrapped_tree(Path(argv[-2]))
            for line in DEBOOTSTRAP_OUTPUT:
                (on_line or print)(line)
        elif argv[0] == "chroot" and "install" in argv:
            python = Path(argv[1]) / "usr/bin/python3"
            python.write_text("python")
            Path(argv[1], "usr/share/doc/python3").mkdir(parents=True)
            Path(argv[1], "usr/share/doc/python3/README").write_text("doc")
            (on_line or print)("Setting up python3 (3.11.2-1+b1) ...")

    def programs(self) -> list[str]:
        return [call[0] if call[0] != "chroot" else f"chroot {call[-1]}" for call in self.calls]


@pytest.fixture
def fake_debian_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCommands:
    commands = FakeCommands()
    monkeypatch.setattr(debian, "run_command", commands)
    monkeypatch.setattr(rootfs, "run_command", commands)
    monkeypatch.setattr(debian, "require_root", lambda: None)
    monkeypatch.setattr(debian, "_make_devices", lambda root: None)
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://mirror.example/debian\n")
    monkeypatch.setattr(debian, "DEBIAN_SOURCES", sources)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    monkeypatch.setattr(debian, "HOST_RESOLV_CONF", resolv)
    return commands


def test_debian_build_makes_the_base_once_and_installs_the_packages(
    tmp_path: Path, fake_debian_host: FakeCommands
) -> None:
    engine = FakeEngine()
    cache_dir = tmp_path / "cache"
    reports: list[float | None] = []
    stack = STACKS["python"]

    assert build_stack(
        stack, engine.as_engine(), cache_dir=cache_dir, on_progress=lambda m, f: reports.append(f)
    )

    debootstrap = fake_debian_host.calls[0]
    assert debootstrap[:3] == ["debootstrap", "--variant=minbase", "bookworm"]
    assert debootstrap[4:] == ["http://mirror.example/debian"]
    expected_programs = [
        *["mount"] * 3,  # /proc, then apt's lists and downloads from the shared cache
        "chroot update",
        "chroot python3",
        "chroot autoclean",
        *["umount"] * 3,
    ]
    assert fake_debian_host.programs()[1:] == expected_programs
    binds = [call[2:] for call in fake_debian_host.calls if call[:2] == ["mount", "--bind"]]
    assert [(Path(source).relative_to(cache_dir), Path(target).name) for source, target in binds] == [
        (Path("apt/lists"), "lists"),
        (Path("apt/archives"), "archives"),
    ]
    assert debian.base_tarball_path(cache_dir).is_file()
    assert [f for f in reports if f is not None] == sorted(f for f in reports if f is not None)
    assert reports[-1] == 1.0

    tar_bytes = engine.imports[0][1]
    found = members(tar_bytes)
    assert "usr/bin/python3" in found
    assert {"mnt/code", "mnt/task"} <= set(found)
    assert not [name for name in found if name.startswith(("usr/share/doc/", "var/lib/apt/lists/"))]
    assert "etc/resolv.conf" not in found
    assert "etc/hostname" not in found
    assert "usr/sbin/policy-rc.d" not in found
    assert (
        read_member(tar_bytes, "etc/apt/sources.list") == "deb http://mirror.example/debian bookworm main\n"
    )
    assert read_member(tar_bytes, "etc/dpkg/dpkg.cfg.d/dockworker-lean").startswith("path-exclude=")
    assert "worker:x:1000:1000:worker:/tmp:/bin/sh" in read_member(tar_bytes, "etc/passwd").splitlines()
    assert leftovers(cache_dir) == []

    other = Stack(name="other", version="1", description="", packages=("perl",), legacy_command="perl {file}")
    fake_debian_host.calls.clear()
    assert build_stack(other, engine.as_engine(), cache_dir=cache_dir)
    assert "debootstrap" not in fake_debian_host.programs()


def test_a_failed_install_unmounts_and_leaves_nothing_behind(
    tmp_path: Path, fake_debian_host: FakeCommands
) -> None:
    engine = FakeEngine()
    cache_dir = tmp_path / "cache"
    fake_debian_host.fail_on = "install"
    with pytest.raises(InfrastructureError):
        build_stack(STACKS["python"], engine.as_engine(), cache_dir=cache_dir)
    assert fake_debian_host.programs()[-1] == "umount"
    assert engine.imports == []
    assert leftovers(cache_dir) == []
    assert debian.base_tarball_path(cache_dir).is_file()  # the base is still good for next time


def test_a_failed_debootstrap_caches_nothing(tmp_path: Path, fake_debian_host: FakeCommands) -> None:
    cache_dir = tmp_path / "cache"
    fake_debian_host.fail_on = "--variant=minbase"
    with pytest.raises(InfrastructureError):
        build_stack(STACKS["python"], FakeEngine().as_engine(), cache_dir=cache_dir)
    assert not debian.base_tarball_path(cache_dir).exists()
    assert leftovers(cache_dir) == []


def test_debian_builds_need_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(InfrastructureError, match="needs root"):
        build_stack(STACKS["python"], FakeEngine().as_engine(), cache_dir=tmp_path)
    assert leftovers(tmp_path) == []


def test_run_command_reports_the_tail_of_the_output() -> None:
    lines: list[str] = []
    script = "for i in $(seq 1 40); do echo line $i; done; echo oops >&2; exit 3"
    with pytest.raises(InfrastructureError, match="exit code 3") as caught:
        run_command(["sh", "-c", script], on_line=lines.append)
    assert len(lines) == 41
    message = str(caught.value)
    assert "oops" in message
    assert "line 40" in message
    assert "line 1\n" not in message


def test_run_command_reports_a_missing_program() -> None:
    with pytest.raises(InfrastructureError, match="cannot run no-such-program-here"):
        run_command(["no-such-program-here"])
