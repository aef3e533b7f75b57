"""The stacks: the language environments dockworker builds as local images, and the legacy
runtime names that select them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from ..errors import ClientError

# Bump when the way images are built changes, so that every stack is rebuilt.
BUILDER_VERSION = 1
DEBIAN_SUITE = "bookworm"
DEBIAN_VARIANT = "minbase"
IMAGE_REPOSITORY_PREFIX = "dockworker/stack-"

BaseKind = Literal["busybox", "debian"]


@dataclass(frozen=True, kw_only=True)
class Stack:
    name: str
    version: str
    description: str
    packages: tuple[str, ...]
    legacy_command: str
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

    def recipe_digest(self) -> str:
        recipe = {
            "builder": BUILDER_VERSION,
            "name": self.name,
            "version": self.version,
            "base": self.base,
            "packages": sorted(self.packages),
            "user": self.user,
        }
        if self.base == "debian":
            recipe["suite"] = DEBIAN_SUITE
            recipe["variant"] = DEBIAN_VARIANT
        encoded = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()


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
            name="python",
            version="3.11",
            description="Python 3.11 with the full standard library, on Debian 12 (bookworm)",
            packages=("python3",),
            legacy_command="python3 {file}",
        ),
    )
}

RUNTIME_ALIASES: dict[str, str] = {
    "python": "python",
    "python3": "python",
    "sh": "busybox",
    "binary": "busybox",
}


def get_stack(name: str) -> Stack:
    try:
        return STACKS[name]
    except KeyError:
        known = ", ".join(sorted(STACKS))
        raise ClientError(f"unknown stack {name!r}; known: {known}") from None


def stack_for_runtime(runtime: str) -> Stack:
    try:
        return STACKS[RUNTIME_ALIASES[runtime]]
    except KeyError:
        known = ", ".join(sorted(RUNTIME_ALIASES))
        raise ClientError(f"unknown runtime {runtime!r}; known: {known}") from None
