"""``dockworker run-local`` without Docker: the checks an upload would make, and the status line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockworker.cli.run_local import check_spec, describe, describe_usage
from dockworker.errors import ClientError
from dockworker.models import CodeSpec, TaskOutcome
from dockworker.runner.contract import with_build_hint
from dockworker.states import TaskStatus


@pytest.fixture
def worker(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text("print('hi')")
    return tmp_path


@pytest.mark.parametrize(
    "spec",
    [
        CodeSpec(name="w", stack="python", command="python3 main.py"),
        CodeSpec(name="w", runtime="python", file_name="main.py"),
        CodeSpec(name="w", image="my/image:1"),
        CodeSpec(name="w", runtime="python", file_name="main.py", stack="python"),
    ],
)
def test_accepted_specs(spec: CodeSpec, worker: Path) -> None:
    check_spec(spec, worker)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (CodeSpec(name="w"), "give one of --stack, --image or --runtime"),
        (CodeSpec(name="w", image="i:1", stack="python"), "not both"),
        (CodeSpec(name="w", stack="cobol", command="x"), "unknown stack 'cobol'"),
        (CodeSpec(name="w", runtime="cobol", file_name="main.py"), "unknown runtime 'cobol'"),
        (CodeSpec(name="w", runtime="python"), "--runtime needs --file-name"),
        (CodeSpec(name="w", stack="python"), "--stack needs --command"),
        (CodeSpec(name="w", runtime="python", file_name="other.py"), "'other.py' is not a file"),
    ],
)
def test_refused_specs(spec: CodeSpec, message: str, worker: Path) -> None:
    with pytest.raises(ClientError, match=message):
        check_spec(spec, worker)


def test_the_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="is not a directory"):
        check_spec(CodeSpec(name="w", image="i:1"), tmp_path / "missing")


def test_status_lines() -> None:
    complete = TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0)
    failed = TaskOutcome(status=TaskStatus.ERROR, msg="exit code 3: bye", exit_code=3)
    assert describe("t1", complete) == "Task t1 complete (exit code 0)"
    assert describe("t1", failed) == "Task t1 error: exit code 3: bye"


def test_a_missing_stack_image_names_the_build_command() -> None:
    message = "image not found on the engine: No such image: dockworker/stack-go:1.19"
    assert with_build_hint(CodeSpec(name="w", runtime="golang", file_name="a.go"), message) == (
        f"{message} (the go stack is not built on this engine: run 'dockworker stacks build go')"
    )
    assert with_build_hint(CodeSpec(name="w", stack="r", command="Rscript a.R"), message).endswith(
        "run 'dockworker stacks build r')"
    )
    assert with_build_hint(CodeSpec(name="w", image="my/image:1"), message) == message


def test_the_usage_line_says_what_the_engine_measured() -> None:
    measured = TaskOutcome(status=TaskStatus.COMPLETE, msg="", cpu_time_ms=1234, peak_memory_bytes=161390592)
    assert describe_usage(measured) == "Used 1.23 s of CPU and 153.9 MiB of memory at its peak"
    cpu_only = TaskOutcome(status=TaskStatus.COMPLETE, msg="", cpu_time_ms=40)
    assert describe_usage(cpu_only) == "Used 40 ms of CPU"
    assert describe_usage(TaskOutcome(status=TaskStatus.ERROR, msg="image not found")) == ""
