"""Engine errors are classified once, in the adapter, into dockworker's error families; exits
are classified into task outcomes."""

from __future__ import annotations

from typing import cast

import docker.errors
import pytest
import requests

from dockworker.engine import ExitInfo
from dockworker.engine.adapter import START_ACTION, _engine_time, _raise_classified
from dockworker.errors import (
    ContainerGone,
    DockworkerError,
    EngineUnavailable,
    ImageMissing,
    InfrastructureError,
    TaskSetupError,
)
from dockworker.runner.container_run import classify_exit
from dockworker.states import TaskStatus


def _api_error(status: int, explanation: str | bytes) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    # docker-stubs type it str | None; the adapter also decodes a bytes one, which this checks
    return docker.errors.APIError("engine said no", response=response, explanation=cast(str, explanation))


def _classify(exc: Exception, action: str = "create container") -> DockworkerError:
    with pytest.raises(DockworkerError) as caught:
        _raise_classified(exc, action)
    return caught.value


@pytest.mark.parametrize(
    ("exc", "action", "family", "text"),
    [
        (
            docker.errors.ImageNotFound("no such image: x"),
            "create container",
            ImageMissing,
            "image not found",
        ),
        (docker.errors.NotFound("no such container"), "wait container", ContainerGone, "wait container"),
        (_api_error(409, "conflict"), "create container", TaskSetupError, "conflict"),
        (
            _api_error(500, b"engine is shutting down"),
            "create container",
            InfrastructureError,
            "engine error 500",
        ),
        (
            _api_error(500, 'exec: "nope": executable file not found in $PATH'),
            START_ACTION,
            TaskSetupError,
            "executable file not found",
        ),
        (_api_error(500, "no such file or directory"), "create container", InfrastructureError, "500"),
        (requests.exceptions.ConnectionError("refused"), "ping", EngineUnavailable, "unreachable"),
        (FileNotFoundError("/var/run/docker.sock"), "ping", EngineUnavailable, "unreachable"),
        (requests.exceptions.ReadTimeout("slow"), "wait container", InfrastructureError, "ReadTimeout"),
    ],
)
def test_engine_errors_fall_into_one_family(
    exc: Exception, action: str, family: type[DockworkerError], text: str
) -> None:
    classified = _classify(exc, action)
    assert type(classified) is family
    assert text in classified.message
    assert classified.__cause__ is exc


def test_a_cause_that_is_unreachable_makes_the_engine_unavailable() -> None:
    outer = docker.errors.DockerException("wrapped")
    outer.__cause__ = ConnectionRefusedError("refused")
    assert type(_classify(outer, "ping")) is EngineUnavailable


def test_engine_times() -> None:
    assert _engine_time("0001-01-01T00:00:00Z") is None
    assert _engine_time("") is None
    assert _engine_time("2024-05-01T10:00:00.123456789Z") == pytest.approx(1714557600.123456)


@pytest.mark.parametrize(
    ("exit_info", "status", "msg"),
    [
        (ExitInfo(exit_code=0, oom_killed=False), TaskStatus.COMPLETE, ""),
        (ExitInfo(exit_code=2, oom_killed=False), TaskStatus.ERROR, "exit code 2"),
        (ExitInfo(exit_code=1, oom_killed=False, error="bad"), TaskStatus.ERROR, "exit code 1: bad"),
        (ExitInfo(exit_code=127, oom_killed=False), TaskStatus.ERROR, "exit code 127 (command not found)"),
        (
            ExitInfo(exit_code=137, oom_killed=True),
            TaskStatus.ERROR,
            "out of memory: the task exceeded its 32 MB",
        ),
        (ExitInfo(exit_code=137, oom_killed=False), TaskStatus.KILLED, "killed by signal 9 from outside"),
        (ExitInfo(exit_code=143, oom_killed=False), TaskStatus.KILLED, "killed by signal 15 from outside"),
    ],
)
def test_exits_become_outcomes(exit_info: ExitInfo, status: TaskStatus, msg: str) -> None:
    outcome = classify_exit(exit_info, 32)
    assert outcome.status is status and outcome.exit_code == exit_info.exit_code
    assert outcome.msg.startswith(msg) if msg else outcome.msg == ""
