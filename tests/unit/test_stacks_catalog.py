from __future__ import annotations

import dataclasses
import re

import pytest

from dockworker.errors import ClientError
from dockworker.stacks import RUNTIME_ALIASES, STACKS, Stack, catalog, get_stack, stack_for_runtime


def test_the_catalog_has_busybox_and_python() -> None:
    busybox, python = STACKS["busybox"], STACKS["python"]
    assert (busybox.version, busybox.packages, busybox.base) == ("1.35", (), "busybox")
    assert (python.version, python.base) == ("3.11", "debian")
    assert "python3" in python.packages


def test_stacks_are_keyed_by_their_name() -> None:
    assert all(name == stack.name for name, stack in STACKS.items())


def test_image_names() -> None:
    assert STACKS["python"].image == "dockworker/stack-python:3.11"
    assert STACKS["busybox"].image == "dockworker/stack-busybox:1.35"
    assert STACKS["python"].repository == "dockworker/stack-python"


def test_legacy_commands_take_the_file_name() -> None:
    assert STACKS["python"].legacy_command.format(file="hello.py") == "python3 hello.py"
    assert STACKS["busybox"].legacy_command.format(file="run.sh") == "sh run.sh"


def test_tasks_run_as_an_unprivileged_user() -> None:
    for stack in STACKS.values():
        assert stack.user == "1000:1000"
        assert (stack.uid, stack.gid) == (1000, 1000)


def test_gid_defaults_to_uid() -> None:
    stack = dataclasses.replace(STACKS["busybox"], user="1234")
    assert (stack.uid, stack.gid) == (1234, 1234)


def test_stack_is_frozen_and_keyword_only() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        STACKS["python"].version = "3.12"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Stack("x", "1", "d", (), "x {file}")  # type: ignore[call-arg]


def test_get_stack() -> None:
    assert get_stack("python") is STACKS["python"]


def test_get_stack_rejects_unknown_names() -> None:
    with pytest.raises(ClientError, match=r"^unknown stack 'cobol'; known: busybox, python"):
        get_stack("cobol")


def test_runtime_aliases() -> None:
    assert RUNTIME_ALIASES["python"] == "python"
    assert RUNTIME_ALIASES["python3"] == "python"
    assert RUNTIME_ALIASES["sh"] == "busybox"
    assert RUNTIME_ALIASES["binary"] == "busybox"
    assert set(RUNTIME_ALIASES.values()) <= set(STACKS)


@pytest.mark.parametrize(("runtime", "stack_name"), [("python3", "python"), ("binary", "busybox")])
def test_stack_for_runtime(runtime: str, stack_name: str) -> None:
    assert stack_for_runtime(runtime) is STACKS[stack_name]


def test_stack_for_runtime_rejects_unknown_runtimes() -> None:
    with pytest.raises(ClientError, match="unknown runtime 'cobol'"):
        stack_for_runtime("cobol")


def test_recipe_digest_is_a_stable_sha256() -> None:
    digest = STACKS["python"].recipe_digest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == STACKS["python"].recipe_digest()
    assert digest != STACKS["busybox"].recipe_digest()


@pytest.mark.parametrize(
    "change",
    [
        {"name": "python2"},
        {"version": "3.12"},
        {"packages": ("python3", "python3-venv")},
        {"user": "2000:2000"},
        {"base": "busybox"},
    ],
)
def test_recipe_digest_covers_what_defines_the_build(change: dict[str, object]) -> None:
    stack = STACKS["python"]
    assert dataclasses.replace(stack, **change).recipe_digest() != stack.recipe_digest()  # type: ignore[arg-type]


def test_recipe_digest_ignores_the_description_and_package_order() -> None:
    stack = dataclasses.replace(STACKS["python"], packages=("b", "a"))
    same = dataclasses.replace(stack, packages=("a", "b"), description="something else")
    assert same.recipe_digest() == stack.recipe_digest()


def test_recipe_digest_covers_the_builder_version_and_suite(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = STACKS["python"]
    before = stack.recipe_digest()
    monkeypatch.setattr(catalog, "BUILDER_VERSION", catalog.BUILDER_VERSION + 1)
    after_builder = stack.recipe_digest()
    monkeypatch.setattr(catalog, "DEBIAN_SUITE", "trixie")
    after_suite = stack.recipe_digest()
    assert len({before, after_builder, after_suite}) == 3
