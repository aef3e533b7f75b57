"""Runners on other "hosts", for real: remote runners (``dockworker runner --api URL
--cluster-id ID --cluster-token TOKEN``) in a network namespace made by the test, whose only
link is a veth pair to this host, where the API servers (``dockworker server --store
postgresql://...``) listen. The namespace has no route to PostgreSQL (proved below). The
runners share this host's filesystem, hence the Docker engine's socket and their data
directories, as a runner started with ``docker run -v /var/run/docker.sock:...`` would.

Each test makes its own database, servers, runners and namespace, and checks what the issue
asks: tasks complete with their whole log; a runner killed -9, an API server killed -9, one of
two API servers killed: nothing lost, nothing doubled (one terminal state, container starts on
the engine equal attempts), no container left; a revoked or rotated token refused at once; a
cluster token confined to its cluster's tasks."""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import require
from tests.helpers import left_after
from tests.pgdb import PG_URL, Databases, libpq_url

from .netns import RunnerHost, netns_unsupported, runner_host
from .procs import Proc
from .rig import Report, Rig, Timing
from .support import TERMINAL, Api, task_containers

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# A lease long enough to outlast an API server's restart: the runner keeps its tasks.
TIMING = Timing(lease_ttl_s=15, heartbeat_s=1, shutdown_grace_s=5, infra_retry_base_delay_s=0.2)
WAIT_S = 60.0
EXIT_S = 60.0

# Runs until the test releases it: a file the test writes into the package's unpacked code in
# the runner's data directory, which the container sees through its read-only bind mount.
UNTIL_SH = """\
echo "waiting for release"
until [ -e /mnt/code/release ]; do sleep 0.1; done
echo "woke up"
"""
UNTIL_LOG = "waiting for release\nwoke up\n"
# Prints its payload, then as many numbered lines as the payload says.
COUNT_SH = 'echo "payload $(cat "$PAYLOAD_FILE")"\nseq 1 "$(cat "$PAYLOAD_FILE")"\necho "end of $TASK_ID"\n'
# A line before the release, many after it (made while the test holds the API server down).
LATE_SH = """\
echo "before"
until [ -e /mnt/code/release ]; do sleep 0.1; done
seq 1 20000
echo "after"
"""
RERUN_NOTE = "\n[dockworker: attempt 2, after an infrastructure failure]\n"


def count_log(payload: int, task_id: str) -> str:
    return f"payload {payload}\n" + "".join(f"{i}\n" for i in range(1, payload + 1)) + f"end of {task_id}\n"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def host(engine: object) -> Iterator[RunnerHost]:
    reason = netns_unsupported()
    require(reason is None, f"the multi-host tests run runners in network namespaces: {reason}")
    with runner_host("mh") as made:
        yield made


@pytest.fixture
def rig(host: RunnerHost, pg_databases: Databases, tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path, pg_databases, Report(seed=0), remote=host, timing=TIMING)
    try:
        made.open()
        assert made.events is not None
        made.events.start(since=time.time() - 1)
        yield made
    finally:
        made.close()


# --- helpers ----------------------------------------------------------------------------------


def queue(api: Api, code_name: str, cluster: str, payload: str = "") -> str:
    body = {"tasks": [{"code_name": code_name, "cluster": cluster, "payload": payload, "timeout": 120}]}
    task_id: str = api.post("/tasks", body)["tasks"][0]["id"]
    return task_id


def kinds(api: Api, task_id: str) -> list[str]:
    return [event["kind"] for event in api.get(f"/tasks/{task_id}/events")["events"]]


def wait_event(api: Api, task_id: str, kind: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while kind not in (found := kinds(api, task_id)):
        assert time.monotonic() < deadline, f"no {kind} event for task {task_id} in {timeout} s: {found}"
        time.sleep(0.05)


def log_of(api: Api, task_id: str) -> str:
    status, body = api.request("GET", f"/tasks/{task_id}/log")
    assert status == 200, body
    assert isinstance(body, bytes)
    return body.decode()


def wait_log(api: Api, task_id: str, expected: str, timeout: float = WAIT_S) -> None:
    """Until the task's log on the server is ``expected``."""
    deadline = time.monotonic() + timeout
    while (found := log_of(api, task_id)) != expected:
        assert time.monotonic() < deadline, f"log of {task_id}: {found!r}, expected {expected!r}"
        time.sleep(0.05)


def release(rig: Rig, runner: str) -> None:
    """Let every task of the UNTIL and LATE packages that runner runs end."""
    for code_dir in (rig.data_dir(runner) / "code-cache").iterdir():
        if code_dir.is_dir():
            (code_dir / "release").touch()


def wait_exited(container_id: str, timeout: float = WAIT_S) -> None:
    """Until the engine says the container has exited (``docker wait``)."""
    from .engine_watch import docker

    result = docker("wait", container_id, timeout=timeout)
    assert result.returncode == 0, result.stderr


def ended_once(rig: Rig, api: Api, task_id: str, attempts: int) -> None:
    """One terminal state written once; as many container starts on the engine (its own event
    stream) as attempts recorded; no container of the task left."""
    assert rig.events is not None
    terminal = [kind for kind in kinds(api, task_id) if kind in TERMINAL]
    assert terminal == [api.task(task_id)["status"]], terminal
    recorded = rig.query("SELECT attempts FROM tasks WHERE id = %s", task_id)[0][0]
    rig.events.flush()
    started = rig.events.starts().get(task_id, [])
    assert recorded == attempts == len(started), (recorded, started)
    assert left_after(lambda: task_containers(task_id)) == []


def call(
    rig: Rig, method: str, path: str, token: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One request to the first API server, with the given token, as a runner would send it."""
    conn = http.client.HTTPConnection(rig.api_host, rig.apis[0].port, timeout=30)
    try:
        sent = {"Authorization": f"OAuth {token}", **(headers or {})}
        data = None
        if isinstance(body, bytes):
            data = body
            sent["Content-Type"] = "application/octet-stream"
        elif body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw
    finally:
        conn.close()


def exited_refused(proc: Proc) -> str:
    code = proc.wait_exit(EXIT_S)
    output = proc.output()
    assert code is not None, (
        f"the runner still runs {EXIT_S} s after its token was refused:\n{output[-3000:]}"
    )
    assert code != 0, output[-3000:]
    assert "refused this runner's cluster token" in output, output[-3000:]
    return output


# --- the tests --------------------------------------------------------------------------------

PROBE = """
import json, socket, sys
import psycopg
host_ip, api_port, pg_url, pg_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__
try:
    psycopg.connect(pg_url, connect_timeout=3).close()
    db = "connected"
except psycopg.OperationalError as exc:
    db = "failed: " + str(exc).splitlines()[0]
print(json.dumps({"api": tcp(host_ip, api_port), "db": db, "db_over_the_link": tcp(host_ip, pg_port)}))
"""


@pytest.mark.timeout(120)
def test_the_runner_host_reaches_the_api_and_not_the_database(rig: Rig) -> None:
    rig.start_servers(1)
    assert rig.remote is not None
    routes = rig.remote.routes()
    assert len(routes) == 1 and "default" not in routes[0] and rig.remote.ns_ip in routes[0], routes
    pg = sa.engine.make_url(libpq_url(PG_URL))
    probe = rig.remote.run(
        [sys.executable, "-c", PROBE, rig.api_host, str(rig.apis[0].port), rig.url, str(pg.port or 5432)]
    )
    assert probe.returncode == 0, probe.stderr
    reached = json.loads(probe.stdout)
    assert reached["api"] == "connected", reached
    assert reached["db"].startswith("failed"), reached
    assert reached["db_over_the_link"] != "connected", reached


@pytest.mark.timeout(180)
def test_tasks_queued_for_the_cluster_complete_with_their_whole_log(rig: Rig) -> None:
    rig.start_servers(1)
    rig.upload("count", COUNT_SH)
    runner = rig.runner("edge")
    runner.start()
    api = rig.apis[0]
    # one log of about 1.2 MB: several chunks of the runner's log shipping
    payloads = [0, 1, 10, 1000, 200_000, 5]
    ids = [queue(api, "count", rig.cluster_id, str(n)) for n in payloads]
    for task_id, payload in zip(ids, payloads, strict=True):
        done = api.wait_status(task_id, TERMINAL, timeout=WAIT_S)
        assert done["status"] == "complete", done["msg"]
        assert log_of(api, task_id) == count_log(payload, task_id)
        events = api.get(f"/tasks/{task_id}/events")["events"]
        claimed = next(e for e in events if e["kind"] == "claimed")
        assert claimed["detail"] == f"runner edge@{rig.cluster_id}", claimed
        ended_once(rig, api, task_id, attempts=1)
    assert runner.alive()
    stats = rig.root_api(rig.project_token).get(f"/2/clusters/{rig.cluster_id}/stats")["cluster"]
    assert [r["id"] for r in stats["runners"]] == [f"edge@{rig.cluster_id}"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("down", ["restarted at once", "down longer than its lease"])
def test_a_runner_killed_mid_task_and_restarted_loses_nothing(rig: Rig, down: str) -> None:
    rig.start_servers(1)
    rig.upload("until", UNTIL_SH)
    runner = rig.runner("edge")
    runner.start()
    api = rig.apis[0]
    task_id = queue(api, "until", rig.cluster_id)
    api.wait_status(task_id, {"running"}, timeout=WAIT_S)
    (container,) = task_containers(task_id)
    wait_log(api, task_id, "waiting for release\n")  # shipped: the runner buffers what it reads

    runner.kill()
    assert task_containers(task_id) == [container], "the container must outlive its runner"
    if down == "restarted at once":
        runner.start()
        wait_event(api, task_id, "readopted")  # the same container, followed again
        release(rig, "edge")
        done = api.wait_status(task_id, TERMINAL, timeout=WAIT_S)
        assert done["status"] == "complete", done["msg"]
        assert log_of(api, task_id) == UNTIL_LOG
        assert "infra_retry" not in kinds(api, task_id)
        ended_once(rig, api, task_id, attempts=1)
    else:
        # the API server's housekeeper hands the task back when the lease runs out
        wait_event(api, task_id, "infra_retry", timeout=TIMING.lease_ttl_s + WAIT_S)
        assert api.task(task_id)["status"] == "queued"
        runner.start()  # its reaper removes the old container; the task runs again
        api.wait_status(task_id, {"running"}, timeout=WAIT_S)
        assert container not in task_containers(task_id)
        release(rig, "edge")
        done = api.wait_status(task_id, TERMINAL, timeout=WAIT_S)
        assert done["status"] == "complete", done["msg"]
        assert log_of(api, task_id) == "waiting for release\n" + RERUN_NOTE + UNTIL_LOG
        assert "readopted" not in kinds(api, task_id)
        ended_once(rig, api, task_id, attempts=2)


@pytest.mark.timeout(180)
def test_the_api_server_restarted_mid_task_loses_nothing(rig: Rig) -> None:
    rig.start_servers(1)
    rig.upload("late", LATE_SH)
    runner = rig.runner("edge")
    runner.start()
    api = rig.apis[0]
    task_id = queue(api, "late", rig.cluster_id)
    api.wait_status(task_id, {"running"}, timeout=WAIT_S)
    (container,) = task_containers(task_id)
    wait_log(api, task_id, "before\n")

    server = rig.servers[0]
    server.kill()
    # While the API is away, the task writes most of its log and ends.
    release(rig, "edge")
    wait_exited(container)
    assert runner.alive(), runner.tail()
    assert rig.query("SELECT status FROM tasks WHERE id = %s", task_id) == [("running",)]

    server.start()
    done = api.wait_status(task_id, TERMINAL, timeout=WAIT_S)
    assert done["status"] == "complete", done["msg"]
    assert log_of(api, task_id) == "before\n" + "".join(f"{i}\n" for i in range(1, 20001)) + "after\n"
    assert not {"infra_retry", "readopted", "late_report_refused"} & set(kinds(api, task_id))
    ended_once(rig, api, task_id, attempts=1)
    assert runner.alive() and runner.starts == 1
    assert "runner.log_not_shipped" in runner.output(), "the runner did not buffer its log"


@pytest.mark.timeout(240)
def test_two_api_servers_one_killed_the_runner_fails_over(rig: Rig) -> None:
    rig.start_servers(2)
    rig.upload("until", UNTIL_SH)
    rig.upload("count", COUNT_SH)
    runner = rig.runner("edge", apis=[0, 1])
    runner.start()
    first, second = rig.apis

    # The runner talks to its first address; that server dies while a task runs.
    task_id = queue(second, "until", rig.cluster_id)
    second.wait_status(task_id, {"running"}, timeout=WAIT_S)
    rig.servers[0].kill()
    release(rig, "edge")  # it ends, and is reported, after the first server's death
    done = second.wait_status(task_id, TERMINAL, timeout=WAIT_S)
    assert done["status"] == "complete", done["msg"]
    assert log_of(second, task_id) == UNTIL_LOG
    ended_once(rig, second, task_id, attempts=1)
    after = queue(second, "count", rig.cluster_id, "3")
    assert second.wait_status(after, TERMINAL, timeout=WAIT_S)["status"] == "complete"
    assert log_of(second, after) == count_log(3, after)

    # And back: the first server again, the second one killed.
    rig.servers[0].start()
    rig.servers[1].kill()
    back = queue(first, "count", rig.cluster_id, "4")
    assert first.wait_status(back, TERMINAL, timeout=WAIT_S)["status"] == "complete"
    assert log_of(first, back) == count_log(4, back)
    ended_once(rig, first, back, attempts=1)
    assert runner.alive() and runner.starts == 1, runner.tail()


@pytest.mark.timeout(180)
def test_a_revoked_cluster_token_is_refused_at_once_and_the_runner_exits(rig: Rig) -> None:
    rig.start_servers(1)
    runner = rig.runner("edge")
    runner.start()
    status, answer = call(rig, "GET", "/2/runner/leased", rig.cluster_token)
    assert status == 401 and "X-Runner-Id" in answer["msg"], answer  # the token is good

    project = rig.root_api(rig.project_token)
    status, answer = project.request("DELETE", f"/2/clusters/{rig.cluster_id}/credentials")
    assert status == 200 and answer["cluster"]["token_active"] is False, answer
    status, answer = call(rig, "GET", "/2/runner/leased", rig.cluster_token)
    assert (status, answer["msg"]) == (401, "Invalid or revoked cluster token"), answer
    status, answer = call(
        rig,
        "POST",
        "/2/runner/session",
        rig.cluster_token,
        {"name": "x", "host": "h", "slots": 1, "version": "1"},
    )
    assert status == 401, answer
    exited_refused(runner)


@pytest.mark.timeout(240)
def test_a_rotated_token_stops_the_runner_and_its_task_runs_again_with_the_new_one(rig: Rig) -> None:
    rig.start_servers(1)
    rig.upload("until", UNTIL_SH)
    runner = rig.runner("edge")
    runner.start()
    api = rig.apis[0]
    task_id = queue(api, "until", rig.cluster_id)
    api.wait_status(task_id, {"running"}, timeout=WAIT_S)
    wait_log(api, task_id, "waiting for release\n")

    project = rig.root_api(rig.project_token)
    rotated = project.post(f"/2/clusters/{rig.cluster_id}/credentials")["cluster"]
    new_token = rotated["token"]
    assert new_token != rig.cluster_token
    status, _ = call(rig, "GET", "/2/runner/leased", rig.cluster_token)
    assert status == 401
    exited_refused(runner)
    assert task_containers(task_id) == [], "the stopped runner left its task's container"

    # The same runner (same name, same data directory) started with the new token.
    again = rig.runner("edge", cluster=(rig.cluster_id, new_token))
    again.start()
    wait_event(api, task_id, "infra_retry", timeout=TIMING.lease_ttl_s + WAIT_S)
    api.wait_status(task_id, {"running"}, timeout=WAIT_S)
    release(rig, "edge")
    done = api.wait_status(task_id, TERMINAL, timeout=WAIT_S)
    assert done["status"] == "complete", done["msg"]
    assert log_of(api, task_id) == "waiting for release\n" + RERUN_NOTE + UNTIL_LOG
    ended_once(rig, api, task_id, attempts=2)


@pytest.mark.timeout(180)
def test_a_cluster_token_reaches_only_its_own_clusters_tasks(rig: Rig) -> None:
    rig.start_servers(1)
    rig.upload("count", COUNT_SH)
    other_id, other_token = rig.create_cluster("other")
    runner = rig.runner("edge")
    runner.start()
    api = rig.apis[0]
    theirs = queue(api, "count", other_id, "2")  # queued first: the oldest task
    ours = queue(api, "count", rig.cluster_id, "2")
    assert api.wait_status(ours, TERMINAL, timeout=WAIT_S)["status"] == "complete"
    assert api.task(theirs)["status"] == "queued"
    assert kinds(api, theirs) == ["queued"]

    token = rig.cluster_token
    # no project route, no admin route
    for method, path in [
        ("GET", f"/2/projects/{rig.project_id}/tasks"),
        ("GET", f"/2/projects/{rig.project_id}/tasks/{ours}"),
        ("GET", "/2/clusters"),
        ("GET", "/2/runners"),
    ]:
        status, answer = call(rig, method, path, token)
        assert status == 401, (path, status, answer)
    # and no runner route with a project token
    hello = {"name": "probe", "host": "probe", "slots": 1, "version": "0"}
    assert call(rig, "POST", "/2/runner/session", rig.project_token, hello)[0] == 401

    # A session of its cluster: the other cluster's task is out of reach.
    status, session = call(rig, "POST", "/2/runner/session", token, hello)
    assert status == 200, session
    headers = {"X-Runner-Id": session["runner_id"], "X-Runner-Session": session["session"]}
    ((revision,),) = rig.query("SELECT revision_id FROM tasks WHERE id = %s", theirs)
    assert call(rig, "POST", "/2/runner/claim", token, {"wait_s": 0}, headers) == (200, {"task": None})
    finish = {"status": "complete", "msg": "", "exit_code": 0}
    reason = {"reason": "x"}
    for method, path, body, refused in [
        ("GET", f"/2/runner/tasks/{theirs}", None, 404),
        ("GET", f"/2/runner/revisions/{revision}", None, 404),
        ("GET", f"/2/runner/revisions/{revision}/archive", None, 404),
        ("POST", f"/2/runner/tasks/{theirs}/log?start=0", b"forged", 409),
        ("POST", f"/2/runner/tasks/{theirs}/running", {"start_time": 1.0}, 404),
        ("POST", f"/2/runner/tasks/{theirs}/unreported_start", {"container_id": "x"}, 404),
        ("POST", f"/2/runner/tasks/{theirs}/events", {"kind": "readopted"}, 404),
        ("POST", f"/2/runner/tasks/{theirs}/finish", finish, 404),
        ("POST", f"/2/runner/tasks/{theirs}/release", reason, 404),
        ("POST", f"/2/runner/tasks/{theirs}/requeue", reason, 404),
    ]:
        status, answer = call(rig, method, path, token, body, headers)
        assert status == refused, (method, path, status, answer)
    assert call(rig, "POST", "/2/runner/heartbeat", token, {"running": [theirs]}, headers) == (
        200,
        {"leased": []},
    )
    assert call(rig, "POST", "/2/runner/active", token, {"task_ids": [theirs]}, headers) == (
        200,
        {"task_ids": [theirs]},  # not its to judge: its reaper leaves such a container alone
    )
    assert call(rig, "DELETE", "/2/runner/session", token, headers=headers)[0] == 200
    assert api.task(theirs)["status"] == "queued"
    assert kinds(api, theirs) == ["queued"], "another cluster's runner wrote in the task's history"
    assert rig.query("SELECT log_size, attempts FROM tasks WHERE id = %s", theirs) == [(0, 0)]

    # Its own runner takes it.
    rig.runner("other-edge", cluster=(other_id, other_token)).start()
    assert api.wait_status(theirs, TERMINAL, timeout=WAIT_S)["status"] == "complete"
    assert log_of(api, theirs) == count_log(2, theirs)
    ended_once(rig, api, theirs, attempts=1)
