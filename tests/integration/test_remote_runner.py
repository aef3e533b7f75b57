"""A remote runner (``RemoteLink``: the runner routes over HTTP) driving the same ``Runner`` on
the real Docker engine, against a real API server in this process: tasks run with their whole
log, encrypted payloads are opened by the runner only, and the runner keeps no store of its
own. (Killed runners, API servers restarted, other hosts: tests/acceptance/test_multihost.py.)"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockworker import payload_crypto
from dockworker.api import create_app
from dockworker.engine import DockerEngine
from dockworker.models import ClusterChanges, CodeSpec
from dockworker.names import INSTALLATION_LABEL
from dockworker.runner import Runner
from dockworker.runner.remote import RemoteLink, open_remote_link
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.helpers import queue, save_code, wait_for
from tests.integration.live_server import LiveServer

pytestmark = pytest.mark.docker


@dataclass
class Remote:
    runner: Runner
    link: RemoteLink
    stop: threading.Event
    thread: threading.Thread

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the remote runner did not stop"


@dataclass
class Site:
    store: Store
    project: str
    cluster: str
    token: str
    url: str
    start: Callable[..., Remote]


@pytest.fixture
def site(settings: Settings, store: Store, engine: DockerEngine, tmp_path: Path) -> Iterator[Site]:
    project = store.create_project("p").id
    token, cluster = store.create_cluster(project, "edge", 128)
    started: list[Remote] = []
    with LiveServer(create_app(settings, store)) as server:
        url = f"http://127.0.0.1:{server.port}"

        def start(data_dir: Path = tmp_path / "runner", key: bytes | None = None) -> Remote:
            link = open_remote_link([url], token, data_dir, name="edge-1", slots=2, version="test")
            identity = link.hold_runner_identity()
            runner_settings = settings.replace(
                data_dir=data_dir, clusters=(cluster.id,), store_url="sqlite:///nowhere"
            )
            key_object = payload_crypto.load_private_key(key) if key else None
            runner = Runner(runner_settings, link, engine, identity=identity, payload_key=key_object)
            stop = threading.Event()
            thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
            thread.start()
            remote = Remote(runner, link, stop, thread)
            started.append(remote)
            return remote

        yield Site(store, project, cluster.id, token, url, start)
        for remote in started:
            remote.halt()
    installation = store.installation_id()
    assert engine.list_labelled(f"{INSTALLATION_LABEL}={installation}") == [], "a container was left"


def test_tasks_of_the_cluster_run_with_their_whole_log(site: Site, tmp_path: Path) -> None:
    script = 'i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done; cat "$PAYLOAD_FILE"'
    save_code(
        site.store,
        site.project,
        CodeSpec(name="lines", stack="busybox", command="sh run.sh"),
        {"run.sh": script},
    )
    remote = site.start()
    assert remote.runner.runner_id == f"edge-1@{site.cluster}"
    tasks = [
        queue(site.store, site.project, "lines", payload=f"payload-{n}", cluster=site.cluster)
        for n in range(4)
    ]
    for n, task in enumerate(tasks):
        done = wait_for(site.store, task.id)
        assert done.status is TaskStatus.COMPLETE, done.msg
        expected = "".join(f"line {i}\n" for i in range(3000)) + f"payload-{n}"
        assert site.store.read_log(task.id).decode() == expected
        assert done.runner_id == remote.runner.runner_id and done.attempts == 1
        assert done.cpu_time_ms is not None and done.peak_memory_bytes  # usage crosses the wire
    assert not (tmp_path / "runner" / "dockworker.db").exists(), "a remote runner keeps no store"


def test_a_workers_progress_reaches_the_store_through_the_api(site: Site) -> None:
    script = (
        'echo "40 on the way" > "$PROGRESS_FILE"\n'
        'echo \'{"percent": 90, "msg": "nearly"}\' > "$PROGRESS_FILE"\n'
    )
    save_code(
        site.store, site.project, CodeSpec(name="p", stack="busybox", command="sh run.sh"), {"run.sh": script}
    )
    site.start()
    task = queue(site.store, site.project, "p", cluster=site.cluster)
    done = wait_for(site.store, task.id)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert (done.percent, done.msg) == (90, "nearly")


def test_a_payload_encrypted_for_the_cluster_is_opened_by_its_runner_only(site: Site) -> None:
    private, public = payload_crypto.generate_key_pair(2048)
    site.store.update_cluster(None, site.cluster, _with_key(public))
    save_code(
        site.store,
        site.project,
        CodeSpec(name="echo", stack="busybox", command="sh -c 'cat \"$PAYLOAD_FILE\"'"),
        None,
    )
    sealed = payload_crypto.encrypt('{"card": "4242"}', public)
    site.start(key=private.encode())
    task = queue(site.store, site.project, "echo", payload=sealed, cluster=site.cluster)
    done = wait_for(site.store, task.id)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert site.store.read_log(task.id) == b'{"card": "4242"}'
    assert "4242" not in site.store.load_task(task.id).payload


def test_a_runner_without_the_key_ends_an_encrypted_task_in_error(site: Site) -> None:
    _, public = payload_crypto.generate_key_pair(2048)
    site.store.update_cluster(None, site.cluster, _with_key(public))
    save_code(site.store, site.project, CodeSpec(name="echo", stack="busybox", command="true"), None)
    site.start()
    task = queue(
        site.store, site.project, "echo", payload=payload_crypto.encrypt("x", public), cluster=site.cluster
    )
    done = wait_for(site.store, task.id)
    assert done.status is TaskStatus.ERROR and "no decryption key" in (done.msg or "")


def _with_key(public: str) -> ClusterChanges:
    return ClusterChanges(public_key=public)
