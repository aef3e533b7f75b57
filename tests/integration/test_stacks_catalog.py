"""Every stack of the catalogue runs a hello world in its language through the service path
(store + runner on the real engine), uploaded as a legacy ``runtime`` + ``file_name`` package
so that the stack's command template is exercised too."""

from __future__ import annotations

import pytest

from dockworker.engine import DockerEngine
from dockworker.models import CodeSpec
from dockworker.stacks import RUNTIME_ALIASES, STACKS, Stack
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.conftest import StartRunner
from tests.helpers import queue, save_code, wait_for
from tests.integration.stack_workers import HELLO_WORLDS, PAYLOAD, expected_lines, require_stack

pytestmark = pytest.mark.docker

# Compiling toolchains (javac in memory, go, rustc and its linker) need the service's default.
MEMORY_MB = 512
TASK_TIMEOUT_S = 90


@pytest.fixture
def project(store: Store) -> str:
    return store.create_project("test").id


def test_every_stack_has_a_hello_world_for_one_of_its_runtimes() -> None:
    assert set(HELLO_WORLDS) == set(STACKS)
    for name, hello in HELLO_WORLDS.items():
        assert RUNTIME_ALIASES[hello.runtime] == name


@pytest.mark.parametrize("stack", STACKS.values(), ids=list(STACKS))
def test_hello_world_runs_through_the_service(
    stack: Stack, store: Store, project: str, start_runner: StartRunner, engine: DockerEngine
) -> None:
    require_stack(engine, stack)
    hello = HELLO_WORLDS[stack.name]
    save_code(
        store,
        project,
        CodeSpec(
            name=f"hello-{stack.name}",
            runtime=hello.runtime,
            file_name=hello.file_name,
            config=f"cfg-{stack.name}",
            memory_mb=MEMORY_MB,
        ),
        {hello.file_name: hello.source},
    )
    start_runner()
    task = queue(store, project, f"hello-{stack.name}", payload=PAYLOAD, timeout=TASK_TIMEOUT_S)
    done = wait_for(store, task.id, timeout=TASK_TIMEOUT_S + 15)
    log = store.read_log(task.id).decode(errors="replace")
    assert done.status is TaskStatus.COMPLETE, f"{done.msg}\n{log}"
    lines = log.splitlines()
    for expected in expected_lines(stack):
        assert any(line.startswith(expected) for line in lines), f"{expected!r} not in:\n{log}"


def test_a_stack_whose_image_is_missing_fails_with_the_command_that_builds_it(
    store: Store, project: str, start_runner: StartRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    ghost = Stack(
        name="ghost", version="0", description="never built", packages=("ghost",), legacy_command="sh {file}"
    )
    monkeypatch.setitem(STACKS, "ghost", ghost)
    save_code(store, project, CodeSpec(name="ghostly", stack="ghost", command="true"))
    start_runner()
    done = wait_for(store, queue(store, project, "ghostly").id)
    assert done.status is TaskStatus.ERROR
    assert done.msg is not None
    assert done.msg.startswith("image not found on the engine: ")
    assert "dockworker/stack-ghost:0" in done.msg
    assert done.msg.endswith(
        "(the ghost stack is not built on this engine: run 'dockworker stacks build ghost')"
    )
    assert done.infra_attempts == 0
