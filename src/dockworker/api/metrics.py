"""``GET /metrics`` in Prometheus' text format, for an admin token or the metrics token.

Two sources, so that any number of API servers and runners can be scraped without double
counting or drift:

* **The store, at scrape time** (``StoreCollector``): queue depths, running tasks, outcomes,
  durations, queue waits, container starts, infrastructure retries, runner slots. They are facts
  of the shared database, so every API server answers the same figures, and they survive
  restarts (a counter never resets because a process did). Scrape one API server, or all and
  aggregate with ``max``.
* **This process** (``RunnerMetrics``): what only the process that talks to the engine sees,
  the engine's create+start time and its errors. They are per process and start at zero.

Labels stay bounded: project ids, package names, statuses, priorities and runner ids; never a
task id."""

from __future__ import annotations

import hmac
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..errors import Unauthorized
from ..models import RunnerInfo
from ..settings import Settings
from ..states import TERMINAL, TaskStatus
from ..store import Store
from ..store.analytics_sql import TaskGroupStats
from .deps import ServicesDep
from .responses import ERROR_RESPONSES
from .runners import alive_horizon

router = APIRouter(tags=["metrics"])

DURATION_BOUNDS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
WAIT_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
CONTAINER_START_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
PRIORITIES = (0, 1, 2)
_TERMINAL = sorted(s.value for s in TERMINAL)

Key = tuple[str, str]  # (project id, package name)


class RunnerMetrics:
    """Measurements of the process that runs containers. The runner records them (see
    docs/hud.md for where); until a runner runs in this process they stay at zero."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.container_start_seconds = Histogram(
            "dockworker_container_start_seconds",
            "Time the engine took to create and start a task's container",
            buckets=CONTAINER_START_BOUNDS,
            registry=registry,
        )
        self.engine_errors = Counter(
            "dockworker_engine_errors_total",
            "Errors the Docker engine answered (or failures to reach it) in this process",
            registry=registry,
        )


class StoreCollector(Collector):
    """The store's figures, read when Prometheus scrapes."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not query the store

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        stats = self.store.task_group_stats(DURATION_BOUNDS, WAIT_BOUNDS)
        runners = self.store.list_runners()
        projects = self.store.list_projects()
        took = time.monotonic() - started
        yield from _queue_families(stats)
        yield from _outcome_families(stats)
        yield from _histogram_families(stats)
        yield from _runner_families(runners, time.time() - alive_horizon(self.settings.heartbeat_interval_s))
        info = GaugeMetricFamily("dockworker_project_info", "A project's name", labels=["project", "name"])
        for project in projects:
            info.add_metric([project.id, project.name], 1)
        yield info
        yield GaugeMetricFamily(
            "dockworker_metrics_store_query_seconds", "Time the store took to answer this scrape", value=took
        )


def _keys(stats: list[TaskGroupStats]) -> list[Key]:
    return sorted({(s.project_id, s.code_name) for s in stats})


def _queue_families(stats: list[TaskGroupStats]) -> Iterator[Metric]:
    queued: dict[tuple[str, str, int], int] = defaultdict(int)
    by_status: dict[tuple[str, str, str], int] = defaultdict(int)
    oldest: dict[Key, float] = {}
    for s in stats:
        by_status[(s.project_id, s.code_name, s.status)] += s.count
        if s.status == TaskStatus.QUEUED:
            queued[(s.project_id, s.code_name, s.priority)] += s.count
        if s.oldest_runnable is not None:
            key = (s.project_id, s.code_name)
            oldest[key] = min(oldest.get(key, s.oldest_runnable), s.oldest_runnable)
    labels = ["project", "code"]
    depth = GaugeMetricFamily(
        "dockworker_tasks_queued", "Tasks queued now (delayed ones included)", labels=[*labels, "priority"]
    )
    running = GaugeMetricFamily("dockworker_tasks_running", "Tasks whose container runs now", labels=labels)
    preparing = GaugeMetricFamily(
        "dockworker_tasks_preparing", "Tasks claimed by a runner, container not started yet", labels=labels
    )
    age = GaugeMetricFamily(
        "dockworker_queue_oldest_runnable_age_seconds",
        "How long the oldest runnable queued task has been waiting (0: none waits)",
        labels=labels,
    )
    now = time.time()
    for project, code in _keys(stats):
        for priority in PRIORITIES:
            depth.add_metric([project, code, str(priority)], queued[(project, code, priority)])
        running.add_metric([project, code], by_status[(project, code, TaskStatus.RUNNING)])
        preparing.add_metric([project, code], by_status[(project, code, TaskStatus.PREPARING)])
        since = oldest.get((project, code))
        age.add_metric([project, code], 0.0 if since is None else max(0.0, now - since))
    yield from (depth, running, preparing, age)


def _outcome_families(stats: list[TaskGroupStats]) -> Iterator[Metric]:
    outcomes: dict[tuple[str, str, str], int] = defaultdict(int)
    starts: dict[Key, int] = defaultdict(int)
    infra = 0
    for s in stats:
        if s.status in _TERMINAL:
            outcomes[(s.project_id, s.code_name, s.status)] += s.count
        starts[(s.project_id, s.code_name)] += s.attempts
        infra += s.infra_attempts
    ended = CounterMetricFamily(
        "dockworker_task_outcomes", "Tasks that ended, by final status", labels=["project", "code", "status"]
    )
    started = CounterMetricFamily(
        "dockworker_container_starts", "Containers started for tasks (attempts)", labels=["project", "code"]
    )
    for project, code in _keys(stats):
        for status in _TERMINAL:
            ended.add_metric([project, code, status], outcomes[(project, code, status)])
        started.add_metric([project, code], starts[(project, code)])
    yield ended
    yield started
    yield CounterMetricFamily(
        "dockworker_infrastructure_retries",
        "Infrastructure failures recorded against tasks (re-queued, or failed past the budget)",
        value=infra,
    )


def _bucket_list(bounds: tuple[float, ...], cumulative: list[int], count: int) -> list[tuple[str, float]]:
    return [*((str(float(b)), float(c)) for b, c in zip(bounds, cumulative, strict=True)), ("+Inf", count)]


def _added(left: list[int], right: tuple[int, ...]) -> list[int]:
    return [a + b for a, b in zip(left, right, strict=True)]


def _histogram_families(stats: list[TaskGroupStats]) -> Iterator[Metric]:
    durations: dict[Key, tuple[list[int], int, float]] = {}
    waits: dict[tuple[str, str, int], tuple[list[int], int, float]] = {}
    for s in stats:
        key = (s.project_id, s.code_name)
        buckets, count, total = durations.get(key, ([0] * len(DURATION_BOUNDS), 0, 0.0))
        durations[key] = (_added(buckets, s.duration_buckets), count + s.timed, total + s.duration_sum)
        wait_key = (s.project_id, s.code_name, s.priority)
        buckets, count, total = waits.get(wait_key, ([0] * len(WAIT_BOUNDS), 0, 0.0))
        waits[wait_key] = (_added(buckets, s.wait_buckets), count + s.started, total + s.wait_sum)
    duration = HistogramMetricFamily(
        "dockworker_task_duration_seconds",
        "How long the containers of ended tasks ran",
        labels=["project", "code"],
    )
    for (project, code), (buckets, count, total) in sorted(durations.items()):
        duration.add_metric([project, code], _bucket_list(DURATION_BOUNDS, buckets, count), total)
    wait = HistogramMetricFamily(
        "dockworker_task_queue_wait_seconds",
        "How long started tasks waited, once runnable, for their container to start",
        labels=["project", "code", "priority"],
    )
    for (project, code, priority), (buckets, count, total) in sorted(waits.items()):
        wait.add_metric([project, code, str(priority)], _bucket_list(WAIT_BOUNDS, buckets, count), total)
    yield duration
    yield wait


def runner_state(runner: RunnerInfo, horizon: float) -> str:
    """``alive`` (heard of recently), ``stopped`` (said goodbye) or ``lost`` (went silent)."""
    if runner.stopped_at is not None:
        return "stopped"
    return "alive" if runner.last_heartbeat >= horizon else "lost"


def _runner_families(runners: list[RunnerInfo], horizon: float) -> Iterator[Metric]:
    slots = GaugeMetricFamily(
        "dockworker_runner_slots", "Task slots of live runners", labels=["runner", "state"]
    )
    states = GaugeMetricFamily("dockworker_runners", "Runners that registered, by state", labels=["state"])
    heartbeat = GaugeMetricFamily(
        "dockworker_runner_last_heartbeat_timestamp_seconds",
        "When a runner that has not stopped was last heard of",
        labels=["runner"],
    )
    counts = dict.fromkeys(("alive", "lost", "stopped"), 0)
    for runner in runners:
        state = runner_state(runner, horizon)
        counts[state] += 1
        if state == "alive":
            busy = min(runner.running, runner.slots)
            slots.add_metric([runner.id, "busy"], busy)
            slots.add_metric([runner.id, "free"], runner.slots - busy)
        if state != "stopped":
            heartbeat.add_metric([runner.id], runner.last_heartbeat)
    for state, count in counts.items():
        states.add_metric([state], count)
    yield from (slots, states, heartbeat)


def install_metrics(app: FastAPI, store: Store, settings: Settings) -> None:
    """``/metrics`` with a registry of this application's own (never the global one: two apps
    in one process, as in the tests, must not share series). ``app.state.runner_metrics`` is
    for a runner in the same process to record into."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, settings))
    ProcessCollector(registry=registry)
    app.state.metrics_registry = registry
    app.state.runner_metrics = RunnerMetrics(registry)
    app.include_router(router, responses=ERROR_RESPONSES)


def scraper(request: Request, svc: ServicesDep) -> None:
    """An admin token, or the metrics token of the settings, in the Authorization header."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() not in ("oauth", "bearer") or not token:
        raise Unauthorized("/metrics needs 'Authorization: Bearer <admin token or metrics token>'")
    wanted = svc.settings.metrics_token
    if wanted and hmac.compare_digest(token.encode(), wanted.encode()):
        return
    who = svc.store.authenticate(token)
    if who is None or not who.is_admin:
        raise Unauthorized("/metrics needs an admin token or the metrics token")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(request: Request, _: Annotated[None, Depends(scraper)]) -> Response:
    """Prometheus metrics (text format). Send ``Authorization: Bearer <admin or metrics token>``."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
