"""``dockworker stacks build`` off a terminal: one line per step; the tools' output in the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockworker.cli import stacks as stacks_cli
from dockworker.errors import InfrastructureError
from dockworker.stacks import STACKS
from dockworker.stacks.commands import build_log, log_step, run_command
from dockworker.stacks.progress import Detail, is_step
from tests.unit.test_stacks_build import FakeCommands, FakeEngine, fake_debian_host

__all__ = ["fake_debian_host"]  # the fixture, used by name


def test_plain_output_is_one_line_per_step_and_the_log_has_everything(
    tmp_path: Path, fake_debian_host: FakeCommands, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = FakeEngine()
    cache_dir = tmp_path / "cache"
    results = stacks_cli._build_with_lines([STACKS["python"]], engine.as_engine(), cache_dir, False)

    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith("python: ") for line in lines)
    assert not [line for line in lines if line.startswith(("python: apt:", "python: debootstrap:"))]
    assert lines[0] == f"python: building {STACKS['python'].image}"
    assert lines[-1].startswith(f"python: built {STACKS['python'].image} in ")
    assert len(lines) == len(set(lines)) < 20
    log = Path(results[0]["log"])
    assert log == cache_dir / "logs" / "python.log"
    text = log.read_text()
    assert f"==> building {STACKS['python'].image}" in text
    assert "==> apt-get update" in text
    assert results[0]["built"] is True

    again = stacks_cli._build_with_lines([STACKS["python"]], engine.as_engine(), cache_dir, False)
    assert capsys.readouterr().err.splitlines() == [f"python: {STACKS['python'].image} is up to date"]
    assert again[0]["built"] is False


def test_a_failed_build_names_its_log(tmp_path: Path, fake_debian_host: FakeCommands) -> None:
    fake_debian_host.fail_on = "install"
    with pytest.raises(InfrastructureError, match=r"(?s)building the python stack failed: .*python.log"):
        stacks_cli._build_with_lines([STACKS["python"]], FakeEngine().as_engine(), tmp_path, False)
    assert (tmp_path / "logs" / "python.log").is_file()


def test_the_build_log_gets_every_command_and_all_its_output(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "x.log"
    with build_log(log):
        log_step("first step")
        run_command(["sh", "-c", "echo out; echo err >&2"])
        with pytest.raises(InfrastructureError):
            run_command(["sh", "-c", "echo failing; exit 4"])
    run_command(["echo", "after the block"])
    assert log.read_text().splitlines() == [
        "==> first step",
        "$ sh -c 'echo out; echo err >&2'",
        "out",
        "err",
        "$ sh -c 'echo failing; exit 4'",
        "failing",
        "(exit code 4)",
    ]


def test_details_are_not_steps() -> None:
    assert not is_step(Detail("apt: Get:1 ..."))
    assert is_step("apt-get update")
