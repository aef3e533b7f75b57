"""Builds the busybox stack on the real engine and runs a container from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dockworker.engine import ContainerSpec, DockerEngine
from dockworker.errors import DockworkerError
from dockworker.stacks import STACKS, build_stack, stack_status
from tests.conftest import require

pytestmark = pytest.mark.docker


@pytest.fixture
def engine() -> Iterator[DockerEngine]:
    """The real engine; unlike the shared fixture, it does not need the stack images to exist."""
    try:
        engine = DockerEngine()
        engine.ping()
    except DockworkerError as exc:
        require(False, f"no Docker engine: {exc}")
        raise
    yield engine
    engine.close()


def run_container(engine: DockerEngine, image: str, command: list[str]) -> tuple[int, str]:
    """Exit code and output of a container that is always removed afterwards."""
    spec = ContainerSpec(image=image, command=command, labels={"dockworker.test": "stacks"})
    container_id = engine.create(spec)
    try:
        output = engine.attach(container_id)
        engine.start(container_id)
        text = b"".join(output).decode()
        exit_info = engine.wait(container_id)
    finally:
        engine.remove(container_id)
    return exit_info.exit_code, text


def test_busybox_stack_builds_and_runs_tasks_as_the_worker(engine: DockerEngine, tmp_path: Path) -> None:
    stack = STACKS["busybox"]
    fractions: list[float] = []

    built = build_stack(
        stack, engine, cache_dir=tmp_path, force=True, on_progress=lambda _, f: fractions.append(f or 0.0)
    )

    assert built
    assert fractions[-1] == 1.0
    assert list(tmp_path.iterdir()) == []
    assert stack_status(stack, engine) == "built"
    labels = engine.image_labels(stack.image) or {}
    assert labels["dockworker.stack"] == "busybox"
    assert labels["dockworker.stack.version"] == "1.35"
    assert labels["dockworker.stack.recipe"] == stack.recipe_digest()
    assert (engine.image_size(stack.image) or 0) < 5 * 1024 * 1024

    assert run_container(engine, stack.image, ["sh", "-c", "echo hi; id -u"]) == (0, "hi\n1000\n")

    assert not build_stack(stack, engine, cache_dir=tmp_path)


def test_busybox_stack_has_the_expected_filesystem(engine: DockerEngine, tmp_path: Path) -> None:
    stack = STACKS["busybox"]
    build_stack(stack, engine, cache_dir=tmp_path)
    script = (
        "id -un; test -d /mnt/code && test -d /mnt/task && echo mounts; stat -c %a /tmp; env | grep ^PATH="
    )
    exit_code, output = run_container(engine, stack.image, ["sh", "-c", script])
    assert exit_code == 0
    assert output.splitlines() == [
        "worker",
        "mounts",
        "1777",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]
