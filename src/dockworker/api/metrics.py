"""``GET /metrics`` in Prometheus' text format, for an admin token or the metrics token.

Where each figure comes from, so that any number of API servers and runners can be scraped
without double counting, drift, or a scrape that grows with the task history:

* **Totals and current state, read from the store at scrape time** (``StoreCollector``): tasks
  queued/preparing/running now, the oldest runnable task's wait, outcomes per status (a count
  over an index), runner slots and states. Facts of the shared database: every API server
  answers the same figures, and they survive restarts.
* **Observations of task events** (``EventObserver``): each scrape reads the task events
  recorded since the previous one (a range of ``task_events``' primary key) and observes them
  into this process's histograms and counters: run durations, the CPU time tasks used, queue
  waits, container starts, infrastructure retries. Like any Prometheus counter they start at
  zero when the process starts; every API server sees every event, so scrape one (or use
  ``max`` over them).
* **What only the engine's process sees** (``RunnerMetrics``): the engine's create+start time
  and its errors, recorded by a runner in the same process (see docs/hud.md).

Labels stay bounded: project ids, package names, statuses, priorities and runner ids; never a
task id."""

from __future__ import annotations

import contextlib
import hmac
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..errors import Unauthorized
from ..models import RunnerInfo, StatusCount, TaskFact
from ..runner.prometheus import RunnerMetrics
from ..settings import Settings
from ..states import TERMINAL, TaskStatus
from ..store import Store, StoreUnavailable
from .deps import ServicesDep
from .responses import ERROR_RESPONSES
from .runners import alive_horizon

router = APIRouter(tags=["metrics"])

DURATION_BOUNDS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
CPU_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
WAIT_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
PRIORITIES = (0, 1, 2)
_TERMINAL = sorted(s.value for s in TERMINAL)
STARTED, INFRA_RETRY = "started", "infra_retry"
# Event ids are allocated before their transaction commits: on PostgreSQL a lower id may become
# visible after a higher one. Each scrape reads again this many ids below the highest it saw,
# and skips those it already observed.
LATE_COMMIT_IDS = 2000

Key = tuple[str, str]  # (project id, package name)


class EventObserver:
    """Observes the task events recorded since the last scrape into histograms and counters."""

    def __init__(self, store: Store, registry: CollectorRegistry) -> None:
        self.store = store
        self.durations = Histogram(
            "dockworker_task_duration_seconds",
            "How long the containers of tasks that ended ran (observed as they end)",
            ["project", "code"],
            buckets=DURATION_BOUNDS,
            registry=registry,
        )
        self.cpu = Histogram(
            "dockworker_task_cpu_seconds",
            "CPU time the containers of tasks that ended used, as runners measured it (observed as they "
            "end; tasks not measured are left out)",
            ["project", "code"],
            buckets=CPU_BOUNDS,
            registry=registry,
        )
        self.waits = Histogram(
            "dockworker_task_queue_wait_seconds",
            "How long tasks waited, once runnable, for their container to start (observed at start)",
            ["project", "code", "priority"],
            buckets=WAIT_BOUNDS,
            registry=registry,
        )
        self.starts = Counter(
            "dockworker_container_starts",
            "Containers started for tasks (attempts)",
            ["project", "code"],
            registry=registry,
        )
        self.infra_retries = Counter(
            "dockworker_infrastructure_retries",
            "Tasks sent back to the queue after an infrastructure failure",
            registry=registry,
        )
        self._lock = threading.Lock()
        self._highest: int | None = None
        self._floor = 0  # the last event before this process started watching
        self._seen: set[int] = set()

    def start(self) -> None:
        """Observe from now on (not the history before this process). A store that cannot be
        reached yet does not stop the API from starting: the first scrape that reaches it
        starts the observation instead."""
        with self._lock:
            if self._highest is None:
                with contextlib.suppress(StoreUnavailable):
                    self._highest = self._floor = self.store.last_event_id()

    def catch_up(self) -> None:
        with self._lock:
            if self._highest is None:
                self._highest = self._floor = self.store.last_event_id()
                return
            low = max(self._floor, self._highest - LATE_COMMIT_IDS)
            for fact in self.store.task_facts_since(low, [STARTED, INFRA_RETRY, *_TERMINAL]):
                if fact.event_id in self._seen:
                    continue
                self._seen.add(fact.event_id)
                self._highest = max(self._highest, fact.event_id)
                self._observe(fact)
            self._seen = {i for i in self._seen if i > self._highest - LATE_COMMIT_IDS}

    def _observe(self, fact: TaskFact) -> None:
        if fact.kind == INFRA_RETRY:
            self.infra_retries.inc()
        elif fact.kind == STARTED:
            self.starts.labels(fact.project_id, fact.code_name).inc()
            if fact.start_time is not None:
                self.waits.labels(fact.project_id, fact.code_name, str(fact.priority)).observe(
                    max(0.0, fact.start_time - fact.run_at)
                )
        else:
            if fact.start_time is not None and fact.end_time is not None:
                self.durations.labels(fact.project_id, fact.code_name).observe(
                    max(0.0, fact.end_time - fact.start_time)
                )
            if fact.cpu_time_ms is not None:
                self.cpu.labels(fact.project_id, fact.code_name).observe(fact.cpu_time_ms / 1000)


class StoreCollector(Collector):
    """The store's totals and current state, read when Prometheus scrapes."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not query the store

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        active = self.store.active_counts()
        outcomes = self.store.outcome_counts()
        runners = self.store.list_runners()
        projects = self.store.list_projects()
        took = time.monotonic() - started
        keys = sorted({(c.project_id, c.code_name) for c in [*active, *outcomes]})
        yield from _active_families(active, keys)
        yield _outcome_family(outcomes, keys)
        yield from _runner_families(runners, time.time() - alive_horizon(self.settings.heartbeat_interval_s))
        info = GaugeMetricFamily("dockworker_project_info", "A project's name", labels=["project", "name"])
        for project in projects:
            info.add_metric([project.id, project.name], 1)
        yield info
        yield GaugeMetricFamily(
            "dockworker_metrics_store_query_seconds", "Time the store took to answer this scrape", value=took
        )


def _active_families(active: list[StatusCount], keys: list[Key]) -> Iterator[Metric]:
    queued: dict[tuple[str, str, int], int] = defaultdict(int)
    by_status: dict[tuple[str, str, str], int] = defaultdict(int)
    oldest: dict[Key, float] = {}
    for c in active:
        by_status[(c.project_id, c.code_name, c.status)] += c.count
        if c.status == TaskStatus.QUEUED:
            queued[(c.project_id, c.code_name, c.priority or 0)] += c.count
        if c.oldest_runnable is not None:
            key = (c.project_id, c.code_name)
            oldest[key] = min(oldest.get(key, c.oldest_runnable), c.oldest_runnable)
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
    for project, code in keys:
        for priority in PRIORITIES:
            depth.add_metric([project, code, str(priority)], queued[(project, code, priority)])
        running.add_metric([project, code], by_status[(project, code, TaskStatus.RUNNING)])
        preparing.add_metric([project, code], by_status[(project, code, TaskStatus.PREPARING)])
        since = oldest.get((project, code))
        age.add_metric([project, code], 0.0 if since is None else max(0.0, now - since))
    yield from (depth, running, preparing, age)


def _outcome_family(outcomes: list[StatusCount], keys: list[Key]) -> Metric:
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for c in outcomes:
        counts[(c.project_id, c.code_name, c.status)] += c.count
    ended = CounterMetricFamily(
        "dockworker_task_outcomes", "Tasks that ended, by final status", labels=["project", "code", "status"]
    )
    for project, code in keys:
        for status in _TERMINAL:
            ended.add_metric([project, code, status], counts[(project, code, status)])
    return ended


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
    observer = EventObserver(store, registry)
    observer.start()
    app.state.metrics_registry = registry
    app.state.metrics_events = observer
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


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request, _: Annotated[None, Depends(scraper)]) -> Response:
    """Prometheus metrics (text format). Send ``Authorization: Bearer <admin or metrics token>``."""
    observer: EventObserver = request.app.state.metrics_events
    observer.catch_up()
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
