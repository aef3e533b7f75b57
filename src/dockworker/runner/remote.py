"""A runner that reaches only the API (``dockworker runner --api URL --cluster-id ID
--cluster-token TOKEN``): ``RemoteLink`` is the ``RunnerLink`` over the API's runner routes
(``api/runner_api.py``), so the same ``Runner`` drives it as drives the store in process.

What it adds to plain requests:

* identity: a session the server holds for the runner id (one live process per id), taken
  under a lock on the runner's data directory; its secret is kept there, so the same runner
  restarted after a kill resumes it at once instead of waiting for it to expire;
* the log: buffered (within a bound) and shipped by a thread of its own, so an API that is
  briefly away never stalls a task's supervision; every chunk says where it starts, so a
  retried request writes nothing twice; a task's buffered log is shipped before its final
  report, so the log is complete when the task is;
* retries with backoff for the reports that may be repeated, failover between API addresses,
  and a long-poll claim that the server wakes when work arrives."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AlreadyRunning, ClientError, Conflict, InfrastructureError, NotFound
from ..logsetup import Throttled
from ..models import CodeRevision, Task, TaskOutcome
from ..states import EventKind
from ..store.identity import FileLock
from ..wire import outcome_to_wire, revision_from_wire, task_from_wire
from .remote_http import ApiClient, ApiUnreachable, SessionLost, TokenRefused

log = logging.getLogger("dockworker.runner")

CLAIM_WAIT_S = 10.0
CANCEL_POLL_S = 0.5
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
# How long a report that matters now (a container just started) keeps trying before the task
# is handed back: longer than an API server's restart, shorter than a lease.
URGENT_RETRY_S = 12.0
LOG_CHUNK_BYTES = 512 * 1024
LOG_BUFFER_BYTES = 64 * 1024 * 1024  # for every task together; beyond it, writers wait
SESSION_FILE = "runner-session.json"
LOCK_FILE = "runner.lock"


@dataclass
class SessionInfo:
    runner_id: str
    secret: str
    cluster_id: str
    cluster_name: str
    installation_id: str
    memory_mb: int
    lease_ttl_s: float
    heartbeat_interval_s: float
    max_claim_wait_s: float
    encrypted_payloads: bool


@dataclass
class _TaskLog:
    size: int  # the log's size on the server, as far as this runner knows
    pending: bytearray = field(default_factory=bytearray)
    output_bytes: int | None = None
    in_flight: int = 0  # bytes of ``pending`` being sent now
    lost: bool = False  # the lease is gone: nothing more is sent


class RemoteIdentity:
    """The runner id held through the server's session, and the data directory's lock."""

    def __init__(self, link: RemoteLink, lock: FileLock) -> None:
        self.runner_id = link.session.runner_id
        self._link = link
        self._lock = lock

    def held(self) -> bool:
        return self._link.session_held()

    def release(self) -> None:
        self._link.close_session()
        self._lock.release()


class RemoteLink:
    """The runner-facing operations over HTTP. ``runner_id`` arguments are ignored: the server
    knows the caller by its session."""

    def __init__(
        self,
        client: ApiClient,
        data_dir: Path,
        *,
        name: str,
        host: str,
        slots: int,
        version: str,
        claim_wait_s: float = CLAIM_WAIT_S,
    ) -> None:
        self._client = client
        self._data_dir = data_dir
        self._hello = {"name": name, "host": host, "slots": slots, "version": version}
        self._claim_wait_s = claim_wait_s
        self.session: SessionInfo
        self._session_ok = threading.Event()
        self.refused = threading.Event()  # the token no longer works: the runner must stop
        self._closed = threading.Event()
        self._stopping = threading.Event()
        self._throttled = Throttled(log)
        self._logs: dict[str, _TaskLog] = {}
        self._log_lock = threading.Condition()
        self._buffered = 0
        self._checksums: dict[str, str | None] = {}
        self._unreported_starts: dict[str, str] = {}  # task id -> container id
        self._cancels: tuple[float, set[str]] = (0.0, set())
        self._running = 0
        self._shipper = threading.Thread(target=self._ship_logs, name="log-shipper", daemon=True)

    # --- identity -------------------------------------------------------------------------------

    def hold_runner_identity(self, runner_id: str = "") -> RemoteIdentity:
        """Lock the data directory, then open (or resume) the session. AlreadyRunning when
        another process holds either."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(
            self._data_dir / LOCK_FILE,
            lambda holder: AlreadyRunning(
                f"the runner data directory {self._data_dir} is in use by another runner ({holder});"
                " stop it first, or give this one another --data-dir"
            ),
        )
        try:
            self._open_session(resume=self._saved_secret())
        except BaseException:
            lock.release()
            raise
        self._shipper.start()
        return RemoteIdentity(self, lock)

    def _saved_secret(self) -> str | None:
        try:
            saved = json.loads((self._data_dir / SESSION_FILE).read_text())
        except (OSError, ValueError):
            return None
        return str(saved.get("secret")) if isinstance(saved, dict) and saved.get("secret") else None

    def _open_session(self, resume: str | None) -> None:
        reply = self._client.call("POST", "/2/runner/session", payload={**self._hello, "resume": resume})
        data = reply.json()
        self.session = SessionInfo(
            runner_id=data["runner_id"],
            secret=data["session"],
            cluster_id=data["cluster_id"],
            cluster_name=data["cluster_name"],
            installation_id=data["installation_id"],
            memory_mb=int(data["memory_mb"]),
            lease_ttl_s=float(data["lease_ttl_s"]),
            heartbeat_interval_s=float(data["heartbeat_interval_s"]),
            max_claim_wait_s=float(data["max_claim_wait_s"]),
            encrypted_payloads=bool(data["encrypted_payloads"]),
        )
        path = self._data_dir / SESSION_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"runner_id": self.session.runner_id, "secret": self.session.secret}))
        temporary.chmod(0o600)
        temporary.replace(path)
        self._client.session_headers = {
            "X-Runner-Id": self.session.runner_id,
            "X-Runner-Session": self.session.secret,
        }
        self._session_ok.set()

    def session_held(self) -> bool:
        """False after the server said the session ended (taken over, or ended while this
        runner was cut off for longer than it lasts): try to take it back, once in a while."""
        if self._session_ok.is_set():
            return True
        if self.refused.is_set() or self._closed.is_set():
            return False
        try:
            self._open_session(resume=self.session.secret)
        except AlreadyRunning as exc:
            self._throttled(logging.ERROR, "runner.session_taken", {"error": exc.message})
        except (InfrastructureError, ClientError, Conflict) as exc:
            self._throttled(logging.WARNING, "runner.session_reopen_failed", {"error": exc.message})
        return self._session_ok.is_set()

    def close_session(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._log_lock:
            self._log_lock.notify_all()
        if self._session_ok.is_set():
            try:
                self._client.call("DELETE", "/2/runner/session", timeout=10)
                (self._data_dir / SESSION_FILE).unlink(missing_ok=True)
            except (InfrastructureError, ClientError) as exc:
                log.warning("runner.session_not_closed", extra={"error": exc.message})
        self._client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        if self.refused.is_set():  # it will not be accepted again: fail at once
            raise TokenRefused("the API refused this runner's cluster token")
        try:
            return self._client.call(method, path, **kwargs).json()
        except SessionLost:
            self._session_ok.clear()
            raise
        except TokenRefused:
            self.refused.set()
            raise

    def _call_retrying(self, method: str, path: str, within_s: float | None = None, **kwargs: Any) -> Any:
        """Retried with backoff while the API cannot be reached, for ``within_s`` seconds
        (default URGENT_RETRY_S; for requests whose repetition writes nothing twice)."""
        deadline = time.monotonic() + (URGENT_RETRY_S if within_s is None else within_s)
        delay = RETRY_FIRST_S
        while True:
            try:
                return self._call(method, path, **kwargs)
            except ApiUnreachable:
                if time.monotonic() + delay > deadline or self._closed.wait(delay):
                    raise
                delay = min(delay * 2, RETRY_MAX_S)

    # --- the RunnerLink operations --------------------------------------------------------------

    def installation_id(self) -> str:
        return self.session.installation_id

    def register_runner(
        self, runner_id: str, host: str, clusters: Sequence[str], slots: int, version: str
    ) -> None:
        """Done by opening the session."""

    def runner_heartbeat(self, runner_id: str, running: int) -> None:
        self._running = running  # sent with the leases' heartbeat, which follows

    def unregister_runner(self, runner_id: str) -> None:
        """Done by closing the session (the identity's release)."""

    def claim(
        self, runner_id: str, clusters: Sequence[str], lease_ttl: float, starvation_s: float = 300.0
    ) -> Task | None:
        """A long poll: the server answers when a task of the cluster is leased to this runner,
        or after the wait. Sent once: a claim repeated blindly could lease a task nobody sees."""
        wait = min(self._claim_wait_s, self.session.max_claim_wait_s)
        try:
            data = self._call(
                "POST", "/2/runner/claim", payload={"wait_s": wait}, timeout=wait + 30, once=True
            )
        except ApiUnreachable:
            if self._stopping.is_set():
                return None  # cut by stop_claiming
            raise
        task = None if data["task"] is None else task_from_wire(data["task"])
        if task is not None:
            self._know_log(task)
        return task

    def stop_claiming(self) -> None:
        """The runner is stopping: end a long-poll claim in flight now rather than when the
        server answers (up to CLAIM_WAIT_S later). The server hands back a task it had just
        leased when it finds the connection gone."""
        self._stopping.set()
        self._client.interrupt()

    def wait_for_work(self, timeout: float) -> None:
        """Nothing to do: the claim itself waited for work."""

    def notify_work(self) -> None:
        """Nothing to do: the server wakes claims."""

    def get_revision(self, revision_id: str) -> CodeRevision:
        data = self._call_retrying("GET", f"/2/runner/revisions/{revision_id}")
        revision = revision_from_wire(data["revision"])
        self._checksums[revision.id] = revision.checksum
        return revision

    def get_revision_archive(self, revision_id: str) -> bytes | None:
        try:
            reply = self._client.call("GET", f"/2/runner/revisions/{revision_id}/archive", timeout=300)
        except NotFound:
            return None
        data = reply.body
        expected = self._checksums.get(revision_id)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise InfrastructureError(f"the code archive of revision {revision_id} arrived damaged")
        return data

    def load_task(self, task_id: str) -> Task:
        task = task_from_wire(self._call_retrying("GET", f"/2/runner/tasks/{task_id}")["task"])
        self._know_log(task)
        return task

    def mark_running(
        self,
        task_id: str,
        runner_id: str,
        start_time: float,
        container_id: str = "",
        created_at: float | None = None,
    ) -> bool:
        """When the API stays away, the runner stops the container and hands the task back; the
        container did start, so that start is reported before the hand-back (an attempt)."""
        body = {"start_time": start_time, "container_id": container_id, "created_at": created_at}
        try:
            return bool(self._call_retrying("POST", f"/2/runner/tasks/{task_id}/running", payload=body)["ok"])
        except ApiUnreachable:
            if container_id:
                with self._log_lock:
                    self._unreported_starts[task_id] = container_id
            raise

    def _report_unreported_start(self, task_id: str) -> None:
        """Before a task's final report: the start that mark_running could not report."""
        with self._log_lock:
            container_id = self._unreported_starts.get(task_id)
        if container_id is None:
            return
        body = {"container_id": container_id, "owner": self.session.runner_id}
        self._call("POST", f"/2/runner/tasks/{task_id}/unreported_start", payload=body)
        with self._log_lock:
            self._unreported_starts.pop(task_id, None)

    def record_unreported_start(self, task_id: str, container_id: str, runner_id: str) -> bool:
        body = {"container_id": container_id, "owner": runner_id}
        return bool(self._call("POST", f"/2/runner/tasks/{task_id}/unreported_start", payload=body)["ok"])

    def finish(self, task_id: str, runner_id: str, outcome: TaskOutcome) -> bool:
        self._ship_before_report(task_id)
        self._report_unreported_start(task_id)
        data = self._call("POST", f"/2/runner/tasks/{task_id}/finish", payload=outcome_to_wire(outcome))
        self._forget_log(task_id)
        return bool(data["ok"])

    def requeue_after_infra_failure(
        self,
        task_id: str,
        runner_id: str,
        reason: str,
        budget: int,
        delay: float,
        max_delay: float = 60.0,
    ) -> Task | None:
        """The server's budget and backoff apply, not this runner's."""
        self._ship_before_report(task_id)
        self._report_unreported_start(task_id)
        data = self._call("POST", f"/2/runner/tasks/{task_id}/requeue", payload={"reason": reason})
        self._forget_log(task_id)
        return None if data["task"] is None else task_from_wire(data["task"])

    def release(self, task_id: str, runner_id: str, reason: str) -> bool:
        self._ship_before_report(task_id)
        self._report_unreported_start(task_id)
        data = self._call("POST", f"/2/runner/tasks/{task_id}/release", payload={"reason": reason})
        self._forget_log(task_id)
        return bool(data["ok"])

    def report_progress(self, task_id: str, runner_id: str, percent: int | None, msg: str | None) -> bool:
        """Sent as it comes (the relay already keeps it to one a second); not retried here: the
        relay keeps what failed and tries again with the next report."""
        body = {"percent": percent, "msg": msg}
        return bool(self._call("POST", f"/2/runner/tasks/{task_id}/progress", payload=body)["ok"])

    def add_event(
        self, task_id: str, kind: EventKind, detail: str = "", container_id: str | None = None
    ) -> None:
        body = {"kind": kind.value, "detail": detail, "container_id": container_id}
        self._call_retrying("POST", f"/2/runner/tasks/{task_id}/events", payload=body)

    def heartbeat(self, runner_id: str, task_ids: Iterable[str], lease_ttl: float) -> set[str]:
        data = self._call("POST", "/2/runner/heartbeat", payload={"running": sorted(task_ids)})
        return set(data["leased"])

    def cancel_requested(self, runner_id: str) -> set[str]:
        """Asked at most every half second (the runner looks five times a second)."""
        asked_at, known = self._cancels
        if time.monotonic() - asked_at < CANCEL_POLL_S:
            return known
        known = set(self._call("GET", "/2/runner/cancels")["task_ids"])
        self._cancels = (time.monotonic(), known)
        return known

    def leased_task_ids(self, runner_id: str) -> set[str]:
        return set(self._call_retrying("GET", "/2/runner/leased")["task_ids"])

    def active_among(self, task_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(task_ids))
        if not ids:
            return set()
        return set(self._call("POST", "/2/runner/active", payload={"task_ids": ids})["task_ids"])

    # --- the log ---------------------------------------------------------------------------------

    def _know_log(self, task: Task) -> None:
        with self._log_lock:
            self._logs.setdefault(task.id, _TaskLog(size=task.log_size))

    def _forget_log(self, task_id: str) -> None:
        with self._log_lock:
            entry = self._logs.pop(task_id, None)
            if entry is not None:
                self._buffered -= len(entry.pending)
                self._log_lock.notify_all()

    def append_log(self, task_id: str, data: bytes, output_bytes: int | None = None) -> None:
        """Buffered; shipped by the log thread. Waits only while every task's buffer together
        is full (the API has been away for long)."""
        if not data:
            return
        with self._log_lock:
            entry = self._logs.get(task_id)
            if entry is None:
                raise NotFound(f"task {task_id} was not claimed or loaded through this link")
            while self._buffered >= LOG_BUFFER_BYTES and not self._closed.is_set() and not entry.lost:
                self._log_lock.wait(1.0)
            if entry.lost:
                return
            entry.pending += data
            entry.output_bytes = output_bytes
            self._buffered += len(data)
            self._log_lock.notify_all()

    def _ship_before_report(self, task_id: str) -> None:
        """Wait until the task's buffered log is on the server (or its lease is lost): its
        final state must not be written before its whole log. Raises ApiUnreachable while
        the API is away (the report is retried)."""
        deadline = time.monotonic() + URGENT_RETRY_S
        with self._log_lock:
            while True:
                entry = self._logs.get(task_id)
                if entry is None or entry.lost or not entry.pending:
                    return
                if self.refused.is_set():
                    raise TokenRefused("the API refused this runner's cluster token")
                if time.monotonic() > deadline or self._closed.is_set():
                    raise ApiUnreachable(f"the log of task {task_id} could not be shipped yet")
                self._log_lock.notify_all()
                self._log_lock.wait(0.5)

    def _next_chunk(self) -> tuple[str, _TaskLog, bytes, int | None] | None:
        for task_id, entry in self._logs.items():
            if entry.pending and not entry.lost:
                chunk = bytes(entry.pending[:LOG_CHUNK_BYTES])
                entry.in_flight = len(chunk)
                output = entry.output_bytes if len(chunk) == len(entry.pending) else None
                return task_id, entry, chunk, output
        return None

    def _ship_logs(self) -> None:
        delay = RETRY_FIRST_S
        while not self._closed.is_set():
            with self._log_lock:
                found = self._next_chunk()
                if found is None:
                    self._log_lock.wait(1.0)
                    continue
            task_id, entry, chunk, output_bytes = found
            params: dict[str, Any] = {"start": entry.size}
            if output_bytes is not None:
                params["output_bytes"] = output_bytes
            try:
                size = self._call("POST", f"/2/runner/tasks/{task_id}/log", body=chunk, params=params)[
                    "log_size"
                ]
            except Conflict:  # not leased to this runner any more: nobody wants the rest
                with self._log_lock:
                    entry.lost = True
                    self._buffered -= len(entry.pending)
                    entry.pending.clear()
                    self._log_lock.notify_all()
                continue
            except (InfrastructureError, ClientError) as exc:
                self._throttled(
                    logging.WARNING, "runner.log_not_shipped", {"task_id": task_id, "error": exc.message}
                )
                self._closed.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            self._throttled.reset("runner.log_not_shipped")
            with self._log_lock:
                del entry.pending[: entry.in_flight]
                self._buffered -= entry.in_flight
                entry.in_flight = 0
                entry.size = int(size)
                self._log_lock.notify_all()


def default_name(data_dir: Path) -> str:
    """The runner's name within its cluster: the host's name and a digest of the data
    directory (two runners on one host, with two directories, are two runners)."""
    import socket

    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


def open_remote_link(
    urls: Sequence[str], cluster_token: str, data_dir: Path, *, name: str | None, slots: int, version: str
) -> RemoteLink:
    import socket

    client = ApiClient(urls, cluster_token)
    return RemoteLink(
        client,
        data_dir,
        name=name or default_name(data_dir),
        host=socket.gethostname(),
        slots=slots,
        version=version,
    )


__all__ = ["RemoteIdentity", "RemoteLink", "open_remote_link"]
