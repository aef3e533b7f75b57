from __future__ import annotations

import dataclasses
import re

import pytest

from dockworker.errors import ClientError
from dockworker.stacks import RUNTIME_ALIASES, STACKS, Stack, catalog, get_stack, stack_for_runtime
from dockworker.stacks.build import image_changes
from dockworker.stacks.catalog import RUNTIMES, legacy_command


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


CATALOGUE = {
    "busybox": "1.35",
    "debian": "12",
    "python": "3.11",
    "node": "18",
    "ruby": "3.1",
    "php": "8.2",
    "perl": "5.36",
    "java": "17",
    "go": "1.19",
    "rust": "1.63",
    "ffmpeg": "5.1",
    "imagemagick": "6.9",
    "r": "4.2",
}


def test_the_catalogue_has_every_stack_with_its_version() -> None:
    assert {name: stack.version for name, stack in STACKS.items()} == CATALOGUE


def test_every_debian_stack_but_debian_itself_installs_packages() -> None:
    for stack in STACKS.values():
        assert bool(stack.packages) == (stack.name not in ("busybox", "debian")), stack.name


def test_legacy_commands_take_the_file_name() -> None:
    assert STACKS["python"].legacy_argv("hello.py") == ["python3", "hello.py"]
    assert STACKS["busybox"].legacy_argv("run.sh") == ["sh", "run.sh"]
    assert STACKS["node"].legacy_argv("a b.js") == ["node", "a b.js"]
    assert STACKS["r"].legacy_argv("hello.R") == ["Rscript", "hello.R"]
    assert STACKS["go"].legacy_argv("main.go") == ["go", "run", "main.go"]


@pytest.mark.parametrize(
    ("file_name", "argv"),
    [
        ("worker.jar", ["java", "-jar", "worker.jar"]),
        ("Hello.java", ["java", "Hello.java"]),
        ("Hello.class", ["java", "-cp", ".", "Hello"]),
        ("com/example/Main.class", ["java", "-cp", ".", "com.example.Main"]),
        ("com.example.Main", ["java", "-cp", ".", "com.example"]),
    ],
)
def test_java_legacy_command_depends_on_the_file(file_name: str, argv: list[str]) -> None:
    assert STACKS["java"].legacy_argv(file_name) == argv


def test_rust_compiles_into_the_task_directory_then_runs_with_the_arguments() -> None:
    argv = STACKS["rust"].legacy_argv("main.rs")
    assert argv[:2] == ["sh", "-c"]
    assert argv[3] == "main.rs"
    assert "rustc" in argv[2] and "/mnt/task/" in argv[2] and '"$@"' in argv[2]


def test_a_runtime_may_bring_its_own_command() -> None:
    assert legacy_command("binary", "worker") == ["./worker"]
    assert legacy_command("sh", "run.sh") == ["sh", "run.sh"]
    assert legacy_command("python", "a.py", stack="python") == ["python3", "a.py"]
    assert legacy_command("sh", "run.sh", stack="debian") == ["bash", "run.sh"]


def test_every_stack_has_a_runtime_and_every_runtime_a_stack() -> None:
    assert {runtime.stack for runtime in RUNTIMES.values()} == set(STACKS)
    assert STACKS["python"].runtimes == ["python", "python3"]


def test_stack_environment_goes_into_the_image_and_the_recipe() -> None:
    go = STACKS["go"]
    assert "ENV GOTMPDIR=/mnt/task" in image_changes(go)
    assert "ENV CGO_ENABLED=0" in image_changes(go)
    assert dataclasses.replace(go, env=()).recipe_digest() != go.recipe_digest()


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
    with pytest.raises(ClientError, match=r"^unknown stack 'cobol'; known: busybox, debian, ffmpeg, go, "):
        get_stack("cobol")


def test_runtime_aliases() -> None:
    assert RUNTIME_ALIASES["python"] == "python"
    assert RUNTIME_ALIASES["python3"] == "python"
    assert RUNTIME_ALIASES["sh"] == "busybox"
    assert RUNTIME_ALIASES["binary"] == "debian"
    assert RUNTIME_ALIASES["java"] == "java"
    assert RUNTIME_ALIASES["node"] == "node"
    assert set(RUNTIME_ALIASES.values()) <= set(STACKS)


@pytest.mark.parametrize(
    ("runtime", "stack_name"),
    [("python3", "python"), ("binary", "debian"), ("sh", "busybox"), ("golang", "go")],
)
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
