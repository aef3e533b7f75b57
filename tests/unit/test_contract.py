from __future__ import annotations

from pathlib import Path

import pytest

from dockworker.errors import ClientError, TaskSetupError
from dockworker.models import CodeSpec
from dockworker.runner.contract import (
    TaskFiles,
    container_spec,
    resolve_command,
    resolve_image,
    write_task_files,
)
from dockworker.settings import MB, load_settings


def test_command_is_split_without_a_shell() -> None:
    spec = CodeSpec(name="x", stack="busybox", command="sh -c 'echo a b'")
    assert resolve_command(spec, "t1", has_config=False) == ["sh", "-c", "echo a b"]


def test_legacy_runtime_gets_ironworker_arguments() -> None:
    spec = CodeSpec(name="x", runtime="python", file_name="hello.py")
    assert resolve_command(spec, "t1", has_config=True) == [
        "python3",
        "hello.py",
        "-payload",
        "/mnt/task/payload.json",
        "-config",
        "/mnt/task/config.json",
        "-id",
        "t1",
        "-d",
        "/mnt/task",
    ]
    assert "-config" not in resolve_command(spec, "t1", has_config=False)


def test_image_resolution() -> None:
    assert resolve_image(CodeSpec(name="x", image="my/img:2")) == "my/img:2"
    assert (
        resolve_image(CodeSpec(name="x", stack="python", command="python3 a.py"))
        == "dockworker/stack-python:3.11"
    )
    assert (
        resolve_image(CodeSpec(name="x", runtime="sh", file_name="a.sh")) == "dockworker/stack-busybox:1.35"
    )
    with pytest.raises(TaskSetupError):
        resolve_image(CodeSpec(name="x"))
    with pytest.raises(ClientError):
        resolve_image(CodeSpec(name="x", stack="cobol"))


def test_unparsable_command_is_a_setup_error() -> None:
    with pytest.raises(TaskSetupError, match="cannot parse"):
        resolve_command(CodeSpec(name="x", stack="busybox", command="echo 'unterminated"), "t", False)


def test_container_spec_is_locked_down(tmp_path: Path) -> None:
    settings = load_settings(env={}, data_dir=tmp_path)
    files = TaskFiles(task_dir=tmp_path / "t", code_dir=tmp_path / "c", hosts_file=tmp_path / "hosts")
    spec = CodeSpec(name="x", stack="busybox", command="true", env_vars={"A": "1"}, memory_mb=64, pids=32)
    built = container_spec(
        spec=spec, task_id="t1", files=files, settings=settings, runner_id="r1", installation_id="i1"
    )
    assert built.network_disabled and built.read_only_root
    assert built.user == "1000:1000"
    assert built.memory_bytes == 64 * MB and built.pids == 32
    assert (
        built.env["A"] == "1"
        and built.env["TASK_ID"] == "t1"
        and built.env["PAYLOAD_FILE"] == "/mnt/task/payload.json"
    )
    assert built.labels == {
        "dockworker.task": "t1",
        "dockworker.runner": "r1",
        "dockworker.installation": "i1",
    }
    assert built.working_dir == "/mnt/code"
    assert "/tmp" in built.tmpfs
    modes = {b.target: b.read_only for b in built.binds}
    assert modes == {"/mnt/task/payload.json": True, "/etc/hosts": True, "/mnt/code": True}
    assert built.tmpfs["/mnt/task"].startswith("rw,exec,nosuid,nodev,size=256m,")


def test_secret_env_vars_reach_the_container_and_the_contract_wins(tmp_path: Path) -> None:
    settings = load_settings(env={}, data_dir=tmp_path)
    files = TaskFiles(task_dir=tmp_path / "t", code_dir=None, hosts_file=tmp_path / "hosts")
    spec = CodeSpec(
        name="x",
        stack="busybox",
        command="true",
        env_vars={"A": "1"},
        secret_env_vars={"API_KEY": "s3cret", "TASK_ID": "forged"},  # refused at upload; still overridden
    )
    built = container_spec(
        spec=spec, task_id="t1", files=files, settings=settings, runner_id="r1", installation_id="i1"
    )
    assert built.env["A"] == "1" and built.env["API_KEY"] == "s3cret" and built.env["TASK_ID"] == "t1"


def test_the_progress_fifo_is_bound_writable_and_named_in_the_environment(tmp_path: Path) -> None:
    settings = load_settings(env={}, data_dir=tmp_path)
    fifo = tmp_path / "t" / "progress"
    files = TaskFiles(
        task_dir=tmp_path / "t", code_dir=None, hosts_file=tmp_path / "hosts", progress_fifo=fifo
    )
    spec = CodeSpec(name="x", stack="busybox", command="true", env_vars={"PROGRESS_FILE": "/etc/passwd"})
    built = container_spec(
        spec=spec, task_id="t1", files=files, settings=settings, runner_id="r1", installation_id="i1"
    )
    assert built.env["PROGRESS_FILE"] == "/mnt/task/progress"
    (bind,) = [b for b in built.binds if b.source == str(fifo.resolve())]
    assert (bind.target, bind.read_only) == ("/mnt/task/progress", False)
    without = container_spec(
        spec=CodeSpec(name="x", stack="busybox", command="true"),
        task_id="t1",
        files=TaskFiles(task_dir=tmp_path / "t", code_dir=None, hosts_file=tmp_path / "hosts"),
        settings=settings,
        runner_id="r1",
        installation_id="i1",
    )
    assert "PROGRESS_FILE" not in without.env
    assert all(b.target != "/mnt/task/progress" for b in without.binds)


def test_task_files(tmp_path: Path) -> None:
    import os

    write_task_files(tmp_path / "t", '{"a": 1}', None, os.getuid(), os.getgid())
    assert (tmp_path / "t" / "payload.json").read_text() == '{"a": 1}'
    assert not (tmp_path / "t" / "config.json").exists()
