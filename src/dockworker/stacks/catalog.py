"""The stacks: the language environments dockworker builds as local images, and the legacy
IronWorker runtime names that select them."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from ..errors import ClientError
from ..names import TASK_DIR

# Bump when the way images are built changes, so that every stack is rebuilt.
BUILDER_VERSION = 1
DEBIAN_SUITE = "bookworm"
DEBIAN_VARIANT = "minbase"
IMAGE_REPOSITORY_PREFIX = "dockworker/stack-"
# The task's scratch directory (writable, and unlike the /tmp tmpfs not noexec): toolchains
# that build and then run a program keep their output there.
TASK_SCRATCH = TASK_DIR

BaseKind = Literal["busybox", "debian"]


@dataclass(frozen=True, kw_only=True)
class Stack:
    name: str
    version: str
    description: str
    packages: tuple[str, ...]
    # The command of a legacy `runtime` + `file_name` upload. Placeholders: {file} (the file
    # name, shell-quoted) and {class_name} (a Java class name: "pkg/Main.class" -> "pkg.Main").
    legacy_command: str
    # Templates chosen by the file name's suffix instead of legacy_command, e.g. ".jar".
    legacy_command_by_suffix: tuple[tuple[str, str], ...] = ()
    # Environment set in the image (part of the recipe).
    env: tuple[tuple[str, str], ...] = ()
    user: str = "1000:1000"
    # "busybox": the host's static busybox alone; "debian": the shared minbase rootfs plus `packages`.
    base: BaseKind = "debian"

    @property
    def repository(self) -> str:
        return IMAGE_REPOSITORY_PREFIX + self.name

    @property
    def image(self) -> str:
        return f"{self.repository}:{self.version}"

    @property
    def uid(self) -> int:
        return int(self.user.split(":", 1)[0])

    @property
    def gid(self) -> int:
        uid, _, gid = self.user.partition(":")
        return int(gid or uid)

    @property
    def runtimes(self) -> list[str]:
        """The legacy runtime names that select this stack."""
        return sorted(name for name, runtime in RUNTIMES.items() if runtime.stack == self.name)

    def legacy_argv(self, file_name: str, template: str | None = None) -> list[str]:
        """The command that runs file_name, from template (default: this stack's)."""
        if template is None:
            template = next(
                (t for suffix, t in self.legacy_command_by_suffix if file_name.endswith(suffix)),
                self.legacy_command,
            )
        class_name = str(PurePosixPath(file_name).with_suffix("")).replace("/", ".")
        return shlex.split(template.format(file=shlex.quote(file_name), class_name=shlex.quote(class_name)))

    def recipe_digest(self) -> str:
        recipe: dict[str, object] = {
            "builder": BUILDER_VERSION,
            "name": self.name,
            "version": self.version,
            "base": self.base,
            "packages": sorted(self.packages),
            "user": self.user,
        }
        if self.env:
            recipe["env"] = sorted(self.env)
        if self.base == "debian":
            recipe["suite"] = DEBIAN_SUITE
            recipe["variant"] = DEBIAN_VARIANT
        encoded = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """A legacy IronWorker runtime name: the stack it runs in, and its own command template
    when the stack's default does not fit (e.g. "binary" runs the file itself)."""

    stack: str
    command: str | None = None


_RUST_BINARY = f"{TASK_SCRATCH}/.rust-worker"

STACKS: dict[str, Stack] = {
    stack.name: stack
    for stack in (
        Stack(
            name="busybox",
            version="1.35",
            description="BusyBox 1.35 shell and core utilities, nothing else (about 2 MB)",
            packages=(),
            legacy_command="sh {file}",
            base="busybox",
        ),
        Stack(
            name="debian",
            version="12",
            description="Debian 12 (bookworm) minimal: bash, coreutils, glibc; for scripts and binaries",
            packages=(),
            legacy_command="bash {file}",
        ),
        Stack(
            name="python",
            version="3.11",
            description="Python 3.11 with the full standard library, on Debian 12 (bookworm)",
            packages=("python3",),
            legacy_command="python3 {file}",
        ),
        Stack(
            name="node",
            version="18",
            description="Node.js 18 on Debian 12 (bookworm)",
            packages=("nodejs",),
            legacy_command="node {file}",
        ),
        Stack(
            name="ruby",
            version="3.1",
            description="Ruby 3.1 on Debian 12 (bookworm)",
            packages=("ruby",),
            legacy_command="ruby {file}",
        ),
        Stack(
            name="php",
            version="8.2",
            description="PHP 8.2 command line on Debian 12 (bookworm)",
            packages=("php8.2-cli",),
            legacy_command="php {file}",
        ),
        Stack(
            name="perl",
            version="5.36",
            description="Perl 5.36 with its core modules on Debian 12 (bookworm)",
            packages=("perl",),
            legacy_command="perl {file}",
        ),
        Stack(
            name="java",
            version="17",
            description="OpenJDK 17 (headless JDK: java, javac, jar) on Debian 12 (bookworm)",
            packages=("openjdk-17-jdk-headless",),
            legacy_command="java -cp . {class_name}",
            legacy_command_by_suffix=((".jar", "java -jar {file}"), (".java", "java {file}")),
        ),
        Stack(
            name="go",
            version="1.19",
            description="Go 1.19 toolchain (go run, go build; no cgo) on Debian 12 (bookworm)",
            packages=("golang-go",),
            legacy_command="go run {file}",
            env=(
                ("CGO_ENABLED", "0"),
                ("GOPROXY", "off"),
                ("GOFLAGS", "-buildvcs=false"),
                # /tmp is noexec: `go run` builds its binary in the task's directory instead.
                ("GOTMPDIR", TASK_SCRATCH),
            ),
        ),
        Stack(
            name="rust",
            version="1.63",
            description="Rust 1.63 (Debian's rustc and cargo) on Debian 12 (bookworm)",
            packages=("rustc", "cargo"),
            legacy_command=(
                f'sh -c \'rustc --edition 2021 -o {_RUST_BINARY} "$0" && exec {_RUST_BINARY} "$@"\' {{file}}'
            ),
            env=(("CARGO_NET_OFFLINE", "true"),),
        ),
        Stack(
            name="ffmpeg",
            version="5.1",
            description="FFmpeg 5.1 (ffmpeg, ffprobe) with bash on Debian 12 (bookworm)",
            packages=("ffmpeg",),
            legacy_command="bash {file}",
        ),
        Stack(
            name="imagemagick",
            version="6.9",
            description="ImageMagick 6.9 (convert, identify, ...) with bash on Debian 12 (bookworm)",
            packages=("imagemagick",),
            legacy_command="bash {file}",
        ),
        Stack(
            name="r",
            version="4.2",
            description="R 4.2 (r-base-core: R, Rscript) on Debian 12 (bookworm)",
            packages=("r-base-core",),
            legacy_command="Rscript {file}",
        ),
    )
}

RUNTIMES: dict[str, Runtime] = {
    "sh": Runtime(stack="busybox"),
    "bash": Runtime(stack="debian"),
    "binary": Runtime(stack="debian", command="./{file}"),
    "python": Runtime(stack="python"),
    "python3": Runtime(stack="python"),
    "node": Runtime(stack="node"),
    "nodejs": Runtime(stack="node"),
    "ruby": Runtime(stack="ruby"),
    "php": Runtime(stack="php"),
    "perl": Runtime(stack="perl"),
    "java": Runtime(stack="java"),
    "go": Runtime(stack="go"),
    "golang": Runtime(stack="go"),
    "rust": Runtime(stack="rust"),
    "ffmpeg": Runtime(stack="ffmpeg"),
    "imagemagick": Runtime(stack="imagemagick"),
    "r": Runtime(stack="r"),
}

RUNTIME_ALIASES: dict[str, str] = {name: runtime.stack for name, runtime in RUNTIMES.items()}


def get_stack(name: str) -> Stack:
    try:
        return STACKS[name]
    except KeyError:
        known = ", ".join(sorted(STACKS))
        raise ClientError(f"unknown stack {name!r}; known: {known}") from None


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        known = ", ".join(sorted(RUNTIMES))
        raise ClientError(f"unknown runtime {name!r}; known: {known}") from None


def stack_for_runtime(runtime: str) -> Stack:
    return STACKS[get_runtime(runtime).stack]


def legacy_command(runtime: str, file_name: str, stack: str | None = None) -> list[str]:
    """The command of a legacy upload: the runtime's own template if it has one, else the
    stack's (the named stack, or the runtime's)."""
    chosen = get_stack(stack) if stack else stack_for_runtime(runtime)
    return chosen.legacy_argv(file_name, get_runtime(runtime).command)
