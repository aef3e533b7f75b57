"""A code package may name any image present on the engine: it runs with the same contract and
limits as a stack. A missing image ends the task as error, at once, with the reason."""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Iterator

import pytest

from dockworker.engine import DockerEngine
from dockworker.errors import TaskSetupError
from dockworker.models import CodeSpec
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.conftest import BUSYBOX_IMAGE, StartRunner
from tests.helpers import queue, save_code, wait_for

pytestmark = pytest.mark.docker

GREET = """\
#!/bin/sh
echo "custom image says hi to $(cat "$PAYLOAD_FILE") as $(id -u), args: $*"
echo "marker: $(cat /etc/custom-marker)"
"""
DOCKERFILE = f"""\
FROM {BUSYBOX_IMAGE}
COPY greet /usr/local/bin/greet
COPY marker /etc/custom-marker
LABEL dockworker.test=custom-image
CMD ["greet", "from-cmd"]
"""


def build_context(files: dict[str, tuple[str, int]]) -> io.BytesIO:
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, (text, mode) in files.items():
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            member.mode = mode
            tar.addfile(member, io.BytesIO(data))
    context.seek(0)
    return context


@pytest.fixture
def custom_image(engine: DockerEngine) -> Iterator[str]:
    tag = f"dockworker-test/custom-image:{os.getpid()}-{time.monotonic_ns()}"
    context = build_context(
        {"Dockerfile": (DOCKERFILE, 0o644), "greet": (GREET, 0o755), "marker": ("built-offline\n", 0o644)}
    )
    engine.build_image(context, tag=tag)
    yield tag
    engine.remove_image(tag)


@pytest.fixture
def project(store: Store) -> str:
    return store.create_project("test").id


def test_a_code_package_runs_in_a_custom_image_with_its_default_command(
    store: Store, project: str, start_runner: StartRunner, custom_image: str
) -> None:
    save_code(store, project, CodeSpec(name="custom", image=custom_image))
    start_runner()
    task = queue(store, project, "custom", payload="Ada")
    done = wait_for(store, task.id)
    log = store.read_log(task.id).decode()
    assert done.status is TaskStatus.COMPLETE, f"{done.msg}\n{log}"
    assert log == "custom image says hi to Ada as 1000, args: from-cmd\nmarker: built-offline\n"


def test_a_custom_image_gets_the_contract_and_the_limits(
    store: Store, project: str, start_runner: StartRunner, custom_image: str
) -> None:
    probe = "\n".join(
        [
            'greet "$@"',
            'echo "code: $(cat hello.txt)"',
            'echo "config: $(cat "$CONFIG_FILE")"',
            "cat /sys/fs/cgroup/pids/pids.max",
            "touch /probe 2>/dev/null || echo root-readonly",
            "ls /sys/class/net | tr '\\n' ' '; echo",
        ]
    )
    save_code(
        store,
        project,
        CodeSpec(name="custom", image=custom_image, command="sh probe.sh one two", config="c", pids=64),
        {"hello.txt": "from the code package", "probe.sh": probe},
    )
    start_runner()
    task = queue(store, project, "custom", payload="Ada")
    done = wait_for(store, task.id)
    log = store.read_log(task.id).decode()
    assert done.status is TaskStatus.COMPLETE, f"{done.msg}\n{log}"
    assert log.splitlines() == [
        "custom image says hi to Ada as 1000, args: one two",
        "marker: built-offline",
        "code: from the code package",
        "config: c",
        "64",
        "root-readonly",
        "lo ",
    ]


def test_a_missing_custom_image_fails_at_once_without_a_build_hint(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    save_code(store, project, CodeSpec(name="ghost", image="dockworker-test/never-built:1", command="true"))
    start_runner()
    started = time.monotonic()
    done = wait_for(store, queue(store, project, "ghost").id, timeout=20)
    assert time.monotonic() - started < 10
    assert done.status is TaskStatus.ERROR
    assert done.msg == "image not found on the engine: No such image: dockworker-test/never-built:1"
    assert done.infra_attempts == 0


def test_a_broken_dockerfile_is_a_clear_build_error(engine: DockerEngine) -> None:
    dockerfile = f"FROM {BUSYBOX_IMAGE}\nCOPY not-in-the-context /x\n"
    context = build_context({"Dockerfile": (dockerfile, 0o644)})
    with pytest.raises(TaskSetupError, match=r"^build image dockworker-test/broken:1: .*not-in-the-context"):
        engine.build_image(context, tag="dockworker-test/broken:1")
