"""The /metrics event observer: every event observed once, late commits included (a fake store
that hands out events as PostgreSQL may make them visible)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from prometheus_client import CollectorRegistry

from dockworker.api.metrics import EventObserver
from dockworker.models import TaskFact
from dockworker.store import Store


def _fact(event_id: int, kind: str = "infra_retry", cpu_time_ms: int | None = None) -> TaskFact:
    return TaskFact(
        event_id=event_id,
        kind=kind,
        project_id="p",
        code_name="c",
        priority=0,
        run_at=100.0,
        start_time=101.5,
        end_time=104.0,
        cpu_time_ms=cpu_time_ms,
    )


class VisibleEvents:
    def __init__(self) -> None:
        self.visible: list[TaskFact] = []
        self.asked: list[int] = []

    def last_event_id(self) -> int:
        return 5

    def task_facts_since(self, after_id: int, kinds: Sequence[str], limit: int = 50_000) -> list[TaskFact]:
        self.asked.append(after_id)
        return sorted((f for f in self.visible if f.event_id > after_id), key=lambda f: f.event_id)


def _value(registry: CollectorRegistry, name: str, **labels: Any) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_late_commits_are_observed_and_nothing_twice() -> None:
    events = VisibleEvents()
    registry = CollectorRegistry()
    observer = EventObserver(cast(Store, events), registry)
    observer.start()
    events.visible = [_fact(3), _fact(7), _fact(9)]  # 3 is from before the start: never observed
    observer.catch_up()
    assert _value(registry, "dockworker_infrastructure_retries_total") == 2
    events.visible.append(_fact(8))  # committed after 9 was seen
    observer.catch_up()
    observer.catch_up()
    assert _value(registry, "dockworker_infrastructure_retries_total") == 3
    assert events.asked[-1] == 5  # the floor: ids below the start are not read again


def test_starts_and_ends_feed_the_histograms() -> None:
    events = VisibleEvents()
    registry = CollectorRegistry()
    observer = EventObserver(cast(Store, events), registry)
    observer.start()
    events.visible = [_fact(6, "started"), _fact(7, "complete"), _fact(8, "cancelled")]
    observer.catch_up()
    assert _value(registry, "dockworker_container_starts_total", project="p", code="c") == 1
    assert (
        _value(registry, "dockworker_task_queue_wait_seconds_sum", project="p", code="c", priority="0") == 1.5
    )
    assert _value(registry, "dockworker_task_duration_seconds_count", project="p", code="c") == 2
    assert _value(registry, "dockworker_task_duration_seconds_bucket", project="p", code="c", le="2.5") == 2
    assert _value(registry, "dockworker_task_duration_seconds_bucket", project="p", code="c", le="1.0") == 0


def test_the_cpu_time_of_measured_tasks_is_observed_as_they_end() -> None:
    events = VisibleEvents()
    registry = CollectorRegistry()
    observer = EventObserver(cast(Store, events), registry)
    observer.start()
    events.visible = [
        _fact(6, "started", cpu_time_ms=999),  # a start says nothing of what the task used
        _fact(7, "complete", cpu_time_ms=1500),
        _fact(8, "error", cpu_time_ms=30),
        _fact(9, "cancelled"),  # not measured: left out
    ]
    observer.catch_up()
    assert _value(registry, "dockworker_task_cpu_seconds_count", project="p", code="c") == 2
    assert _value(registry, "dockworker_task_cpu_seconds_sum", project="p", code="c") == 1.53
    assert _value(registry, "dockworker_task_cpu_seconds_bucket", project="p", code="c", le="0.05") == 1
    assert _value(registry, "dockworker_task_cpu_seconds_bucket", project="p", code="c", le="2.5") == 2
