"""The OCI backend's engine operations at their edges, on the real runtimes: containers never
started, gone, or failing to start; labels; what the runner reads back."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from dockworker.engine import Bind, ContainerSpec
from dockworker.engine.oci import OciEngine
from dockworker.errors import ContainerGone, InfrastructureError, TaskSetupError
from dockworker.names import TASK_LABEL
from tests.conftest import BUSYBOX_IMAGE

from . import oci_fixtures

runtime = oci_fixtures.runtime
oci_root = oci_fixtures.oci_root
oci_engine = oci_fixtures.oci_engine

pytestmark = pytest.mark.docker


def spec(**changes: object) -> ContainerSpec:
    base = ContainerSpec(image=BUSYBOX_IMAGE, command=["true"], labels={TASK_LABEL: "edge"})
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_container_never_started_is_killed_and_removed_at_once(oci_engine: OciEngine) -> None:
    container_id = oci_engine.create(spec(memory_bytes=96 * 1024 * 1024))
    assert oci_engine.started_at(container_id) is None
    assert oci_engine.memory_limit(container_id) == 96 * 1024 * 1024
    assert not oci_engine.running(container_id)
    with pytest.raises(InfrastructureError, match="never started"):
        oci_engine.wait(container_id)
    started = time.monotonic()
    oci_engine.kill(container_id)
    oci_engine.remove(container_id)
    assert time.monotonic() - started < 5


def test_a_container_that_is_gone_is_said_so(oci_engine: OciEngine) -> None:
    gone = "0" * 64
    for operation in (
        oci_engine.follow_logs,
        oci_engine.started_at,
        oci_engine.memory_limit,
        oci_engine.start,
    ):
        with pytest.raises(ContainerGone):
            operation(gone)
    oci_engine.kill(gone)  # as Docker's: a container already gone is fine
    oci_engine.remove(gone)
    oci_engine.remove("not-an-id")


def test_labels_are_listed_by_key_and_by_value(oci_engine: OciEngine) -> None:
    first = oci_engine.create(spec(labels={TASK_LABEL: "one", "x": "1"}))
    second = oci_engine.create(spec(labels={TASK_LABEL: "two"}))
    try:
        assert {c.id for c in oci_engine.list_labelled(TASK_LABEL)} == {first, second}
        assert [c.id for c in oci_engine.list_labelled(f"{TASK_LABEL}=two")] == [second]
        assert [c.labels for c in oci_engine.list_labelled("x")] == [{TASK_LABEL: "one", "x": "1"}]
        assert oci_engine.list_labelled("x=2") == []
    finally:
        oci_engine.remove(first)
        oci_engine.remove(second)


def test_a_start_that_fails_says_why_and_leaves_nothing(oci_engine: OciEngine, tmp_path: Path) -> None:
    container_id = oci_engine.create(spec(binds=(Bind(source=str(tmp_path / "missing"), target="/mnt/x"),)))
    with pytest.raises((TaskSetupError, InfrastructureError), match="missing"):
        oci_engine.start(container_id)
    oci_engine.remove(container_id)


def test_a_container_starts_once(oci_engine: OciEngine) -> None:
    container_id = oci_engine.create(spec())
    try:
        output = oci_engine.attach(container_id)
        oci_engine.start(container_id)
        assert b"".join(output) == b""
        assert oci_engine.wait(container_id).exit_code == 0
        with pytest.raises(TaskSetupError, match="already started"):
            oci_engine.start(container_id)
    finally:
        oci_engine.remove(container_id)


def test_the_engine_answers_and_knows_its_images(oci_engine: OciEngine) -> None:
    oci_engine.ping()
    assert oci_engine.image_exists(BUSYBOX_IMAGE)
    assert not oci_engine.image_exists("dockworker-test/missing:1")
    with pytest.raises(TaskSetupError, match="image not found"):
        oci_engine.create(spec(image="dockworker-test/missing:1"))


def test_output_read_from_before_the_start_ends_when_the_container_does(
    oci_engine: OciEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner reads the output on its own thread from before the start: that reader is
    woken by the start, not by its polling timer (made an hour long here, so a reader that
    slept through the start would never finish within the test's timeout)."""
    monkeypatch.setattr("dockworker.engine.oci.engine.OUTPUT_POLL_S", 3600.0)
    container_id = oci_engine.create(spec(command=["echo", "done"]))
    read: list[bytes] = []
    try:
        reader = threading.Thread(target=lambda: read.extend(oci_engine.attach(container_id)), daemon=True)
        reader.start()
        time.sleep(0.2)  # the reader is waiting before the start
        oci_engine.start(container_id)
        reader.join(30)
        assert not reader.is_alive(), "the output reader slept through the container's end"
        assert b"".join(read) == b"done\n"
        assert oci_engine.wait(container_id).exit_code == 0
    finally:
        oci_engine.remove(container_id)
