"""Log lines carry what their call put in ``extra=`` (task ids...), as key=value text or JSON,
and repeated failures are rate-limited."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from dockworker.errors import ClientError
from dockworker.logsetup import JsonFormatter, KeyValueFormatter, Throttled, log_format
from dockworker.scheduler import Housekeeper
from tests.fake_engine import Harness
from tests.helpers import queue


def _record(msg: str = "task.crashed", exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("dockworker.runner", logging.ERROR, __file__, 1, msg, None, exc_info)
    record.__dict__.update(extra)
    return record


def test_text_lines_carry_the_extra_fields() -> None:
    line = KeyValueFormatter().format(_record(task_id="abc123", error="disk is full"))
    assert line.endswith('dockworker.runner: task.crashed task_id=abc123 error="disk is full"')


def test_a_traceback_stays_below_its_line() -> None:
    first, *rest = KeyValueFormatter().format(_record(exc=True, task_id="t1")).splitlines()
    assert first.endswith("task.crashed task_id=t1")
    assert rest[-1] == "ValueError: boom"


def test_json_lines_are_one_object_each() -> None:
    entry = json.loads(JsonFormatter().format(_record(exc=True, task_id="t1", attempt=2)))
    assert entry["msg"] == "task.crashed" and entry["level"] == "ERROR"
    assert entry["task_id"] == "t1" and entry["attempt"] == 2
    assert "ValueError: boom" in entry["exc"]


def test_the_format_is_chosen_by_the_environment() -> None:
    assert log_format({}) == "text"
    assert log_format({"DOCKWORKER_LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(ClientError, match="DOCKWORKER_LOG_FORMAT"):
        log_format({"DOCKWORKER_LOG_FORMAT": "xml"})


def test_repeats_within_the_interval_are_held_back_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("dockworker.test")
    throttled = Throttled(logger, interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="dockworker.test"):
        try:
            raise OSError("no space")
        except OSError:
            logged = [throttled(logging.WARNING, "runner.claim_failed", {"runner_id": "r"}, exc_info=True)]
            logged += [throttled(logging.WARNING, "runner.claim_failed", exc_info=True) for _ in range(99)]
        throttled.reset("runner.claim_failed")
        logged.append(throttled(logging.WARNING, "runner.claim_failed"))
    assert logged.count(True) == 2
    first, again = caplog.records
    assert first.exc_info is not None and first.__dict__["runner_id"] == "r"
    assert not again.exc_info


def test_held_back_repeats_are_counted_on_the_next_line(caplog: pytest.LogCaptureFixture) -> None:
    throttled = Throttled(logging.getLogger("dockworker.test"), interval_s=0)
    with caplog.at_level(logging.WARNING, logger="dockworker.test"):
        throttled(logging.WARNING, "a")
        throttled._interval_s = 3600
        throttled(logging.WARNING, "a")
        throttled(logging.WARNING, "a")
        throttled._interval_s = 0
        throttled(logging.WARNING, "a")
    assert [r.__dict__.get("repeated") for r in caplog.records] == [None, 2]


def test_an_expired_lease_is_logged_with_its_task_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness(tmp_path)
    try:
        harness.code()
        task = queue(harness.store, harness.project, "hello")
        assert harness.store.claim("gone", ["default"], lease_ttl=-1) is not None
        with caplog.at_level(logging.WARNING):
            assert Housekeeper(harness.settings, harness.store).tick() == 1
        (record,) = [r for r in caplog.records if r.getMessage() == "lease.expired"]
        assert record.__dict__["task_id"] == task.id
        assert "runner gone lost its lease" in record.__dict__["reason"]
    finally:
        harness.close()
