"""MeteredEngine: what it measures of the engine's calls, on the in-memory engine."""

from __future__ import annotations

import pytest

from dockworker.engine import ContainerSpec
from dockworker.errors import EngineUnavailable, ImageMissing
from dockworker.runner.metering import MeteredEngine
from tests.fake_engine import FakeEngine


class Recorded:
    def __init__(self) -> None:
        self.starts: list[float] = []
        self.errors: list[str] = []

    def container_started(self, seconds: float) -> None:
        self.starts.append(seconds)

    def engine_error(self, operation: str) -> None:
        self.errors.append(operation)


def _spec(engine: FakeEngine) -> ContainerSpec:
    return ContainerSpec(image=next(iter(engine.images)), command=["true"])


def test_create_and_start_are_timed_together_once_per_container() -> None:
    fake, meter = FakeEngine(), Recorded()
    engine = MeteredEngine(fake, meter)
    first = engine.create(_spec(fake))
    never_started = engine.create(_spec(fake))
    engine.start(first)
    engine.remove(never_started)
    engine.remove(first)
    assert len(meter.starts) == 1 and meter.starts[0] >= 0
    assert meter.errors == []


def test_infrastructure_errors_are_counted_by_call_and_task_setup_errors_are_not() -> None:
    fake, meter = FakeEngine(), Recorded()
    engine = MeteredEngine(fake, meter)
    fake.fail("create", EngineUnavailable("gone"))
    with pytest.raises(EngineUnavailable):
        engine.create(_spec(fake))
    with pytest.raises(ImageMissing):
        engine.create(ContainerSpec(image="not/there:1", command=["true"]))
    assert meter.errors == ["create"]
