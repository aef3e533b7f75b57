"""GET /metrics: who may scrape, and the figures the store gives (every dialect)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dockworker.api import create_app
from dockworker.models import CodeSpec, TaskOutcome
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.helpers import queue

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def scrape(settings: Settings, store: Store) -> Iterator[tuple[TestClient, str, str]]:
    admin, _ = store.create_token(None, "ops")
    project = store.create_project("p")
    with TestClient(create_app(settings.replace(metrics_token="scrape-me"), store)) as client:
        yield client, admin, project.id


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def get(client: TestClient, token: str) -> Samples:
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return samples(answer.text)


def test_only_an_admin_token_or_the_metrics_token_may_scrape(
    scrape: tuple[TestClient, str, str], store: Store
) -> None:
    client, admin, project_id = scrape
    project_token, _ = store.create_token(project_id, "dev")
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {project_token}"},
        {"Authorization": f"Basic {admin}"},
    ):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401 and "msg" in refused.json(), headers
    assert client.get(f"/metrics?oauth={admin}").status_code == 401  # never a token in a URL
    for header in (f"OAuth {admin}", f"Bearer {admin}", "Bearer scrape-me"):
        assert client.get("/metrics", headers={"Authorization": header}).status_code == 200


def test_without_a_metrics_token_only_admin_tokens_scrape(settings: Settings, store: Store) -> None:
    admin, _ = store.create_token(None, "ops")
    with TestClient(create_app(settings, store)) as client:
        assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer None"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).status_code == 200


def _finish(store: Store, task_id: str, status: TaskStatus, cluster: str = "default") -> None:
    claimed = store.claim("runner-1", [cluster], 30)
    assert claimed is not None and claimed.id == task_id
    assert store.mark_running(task_id, "runner-1", time.time())
    assert store.finish(task_id, "runner-1", TaskOutcome(status=status, msg=str(status)))


def test_figures_follow_the_store(scrape: tuple[TestClient, str, str], store: Store) -> None:
    client, admin, project_id = scrape
    store.save_code(project_id, CodeSpec(name="hello", image="busybox:latest", command="true"), None, None)
    done = queue(store, project_id, "hello")
    _finish(store, done.id, TaskStatus.COMPLETE)
    failed = queue(store, project_id, "hello")
    _finish(store, failed.id, TaskStatus.ERROR)
    retried = queue(store, project_id, "hello", cluster="infra")
    claimed = store.claim("runner-1", ["infra"], 30)
    assert claimed is not None
    store.requeue_after_infra_failure(retried.id, "runner-1", "engine unreachable", 5, 0.0)
    running = queue(store, project_id, "hello", cluster="run")
    claimed = store.claim("runner-1", ["run"], 30)
    assert claimed is not None and store.mark_running(running.id, "runner-1", time.time())
    for priority in (0, 2, 2):
        queue(store, project_id, "hello", priority=priority, cluster="none")
    store.register_runner("runner-1", "host", ["default"], 4, "0.1.0")
    store.runner_heartbeat("runner-1", 1)
    store.register_runner("runner-2", "host", ["default"], 2, "0.1.0")
    store.unregister_runner("runner-2")

    found = get(client, admin)
    labels = (("code", "hello"), ("project", project_id))

    def value(name: str, *extra: tuple[str, str]) -> float:
        return found[(name, tuple(sorted((*labels, *extra))))]

    assert value("dockworker_tasks_queued", ("priority", "0")) == 2  # one re-queued after infra
    assert value("dockworker_tasks_queued", ("priority", "2")) == 2
    assert value("dockworker_tasks_queued", ("priority", "1")) == 0
    assert value("dockworker_tasks_running") == 1
    assert value("dockworker_task_outcomes_total", ("status", "complete")) == 1
    assert value("dockworker_task_outcomes_total", ("status", "error")) == 1
    assert value("dockworker_task_outcomes_total", ("status", "killed")) == 0
    assert value("dockworker_task_duration_seconds_count") == 2
    assert value("dockworker_task_duration_seconds_bucket", ("le", "+Inf")) == 2
    assert value("dockworker_task_queue_wait_seconds_count", ("priority", "0")) == 3  # three started
    assert value("dockworker_task_queue_wait_seconds_bucket", ("le", "+Inf"), ("priority", "0")) == 3
    assert value("dockworker_container_starts_total") == 3
    assert value("dockworker_queue_oldest_runnable_age_seconds") >= 0
    assert found[("dockworker_infrastructure_retries_total", ())] == 1
    assert found[("dockworker_runner_slots", (("runner", "runner-1"), ("state", "busy")))] == 1
    assert found[("dockworker_runner_slots", (("runner", "runner-1"), ("state", "free")))] == 3
    assert ("dockworker_runner_slots", (("runner", "runner-2"), ("state", "free"))) not in found
    assert found[("dockworker_runners", (("state", "alive"),))] == 1
    assert found[("dockworker_runners", (("state", "stopped"),))] == 1
    assert found[("dockworker_project_info", (("name", "p"), ("project", project_id)))] == 1
    # Measured by the process that runs containers; present (at zero) before any runner does.
    assert found[("dockworker_container_start_seconds_count", ())] == 0
    assert found[("dockworker_engine_errors_total", (("operation", "create"),))] == 0
    # No task id in any label.
    task_ids = {done.id, failed.id, retried.id, running.id}
    assert not {v for _, label_set in found for _, v in label_set} & task_ids


def test_events_are_observed_once_and_from_the_process_start(
    scrape: tuple[TestClient, str, str], settings: Settings, store: Store
) -> None:
    client, admin, project_id = scrape
    store.save_code(project_id, CodeSpec(name="hello", image="busybox:latest", command="true"), None, None)
    first = queue(store, project_id, "hello")
    _finish(store, first.id, TaskStatus.TIMEOUT)
    duration_count = ("dockworker_task_duration_seconds_count", (("code", "hello"), ("project", project_id)))
    assert get(client, admin)[duration_count] == 1
    assert get(client, admin)[duration_count] == 1  # a second scrape observes nothing twice
    with TestClient(create_app(settings, store)) as later:
        # Another API server started now: the same totals, its own observations from now on.
        mine, theirs = get(client, admin), get(later, admin)
        outcomes = [k for k in mine if k[0] == "dockworker_task_outcomes_total"]
        assert outcomes and all(mine[k] == theirs[k] for k in outcomes)
        assert duration_count not in theirs
        second = queue(store, project_id, "hello")
        _finish(store, second.id, TaskStatus.COMPLETE)
        assert get(later, admin)[duration_count] == 1
    assert get(client, admin)[duration_count] == 2
