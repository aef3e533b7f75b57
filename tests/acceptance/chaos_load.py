"""What a chaos run does to the system: more than a thousand short tasks of four kinds (some
complete, some fail, some time out, some are cancelled while queued or running), queued in
batches; meanwhile a thread kills runners with SIGKILL and starts them again, and once brings
one more disruption (the engine restarted, an API server restarted)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .engine_watch import installation_containers
from .oci_witness import oci_containers
from .rig import Report, Rig, elapsed
from .support import Api

TASKS = 1000
BATCH = 100
BATCH_GAP_S = 2.0
KILL_CYCLES = 6
MAX_KILL_CYCLES = 15
DISRUPTION_AFTER_CYCLE = 3
QUEUED_CANCELS_PER_BATCH = 3
RUNNING_CANCELS = 30
# Runner down times alternate around the lease: shorter (the restarted runner finds its own
# leases) and longer (the housekeeper expires them first).
SHORT_DOWN_S = (0.5, 2.0)
LONG_DOWN_S = (4.0, 7.0)
KILL_GAP_S = (4.0, 8.0)
PROGRESS_EVERY_S = 15.0

ACTIVE = ("queued", "preparing", "running")
PACKAGES = {
    "ok": "echo ok\n",
    "fail": 'echo "about to fail"\nexit 3\n',
    "timeout": "echo sleeping\nsleep 10\necho woke\n",
    "medium": 'sleep "$(cat "$PAYLOAD_FILE")"\necho done\n',
}
KIND_WEIGHTS = {"ok": 45, "fail": 15, "timeout": 5, "medium": 35}
EXPECTED = {"ok": "complete", "fail": "error", "timeout": "timeout", "medium": "complete"}


@dataclass
class Load:
    """What the test asked for: every task queued (id -> kind), and the cancels it sent."""

    kinds: dict[str, str] = field(default_factory=dict)
    cancels: dict[str, str] = field(default_factory=dict)  # task id -> "queued" | "running"
    cancel_answers: dict[str, str] = field(default_factory=dict)  # task id -> status answered
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Disruption:
    """Done once, after the third runner kill: ``act`` returns when the system is whole again."""

    name: str
    act: Callable[[Rig], None]


def task_body(rig: Rig, kind: str, rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"code_name": f"chaos-{kind}", "timeout": 2 if kind == "timeout" else 30}
    if kind == "medium":
        body["payload"] = f"{rng.uniform(0.5, 1.0):.2f}"
    if rig.cluster_id:
        body["cluster"] = rig.cluster_id
    return body


def cancel(api: Api, load: Load, task_id: str, when: str) -> None:
    status, answer = api.request("POST", f"/tasks/{task_id}/cancel", timeout=30)
    with load.lock:
        load.cancels[task_id] = when
        if status == 200:
            load.cancel_answers[task_id] = answer["status"]
        else:
            assert status == 409, f"cancel {task_id}: HTTP {status}: {answer!r}"
            load.cancel_answers[task_id] = "409"


def queue_all(rig: Rig, clients: list[Api], load: Load, rng: random.Random) -> None:
    kinds = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()), k=TASKS)
    for number, start in enumerate(range(0, TASKS, BATCH)):
        batch = kinds[start : start + BATCH]
        api = clients[number % len(clients)]
        answer = api.post("/tasks", {"tasks": [task_body(rig, kind, rng) for kind in batch]})
        ids = [task["id"] for task in answer["tasks"]]
        assert len(ids) == len(batch)
        with load.lock:
            load.kinds.update(zip(ids, batch, strict=True))
        other = clients[(number + 1) % len(clients)]
        for task_id in rng.sample(
            [i for i, k in zip(ids, batch, strict=True) if k in ("ok", "medium")], QUEUED_CANCELS_PER_BATCH
        ):
            cancel(other, load, task_id, "queued")
        time.sleep(BATCH_GAP_S)


def cancel_running(
    clients: list[Api],
    load: Load,
    rng: random.Random,
    quiet: threading.Event,
    stop: threading.Event,
    errors: list[str],
) -> None:
    sent = 0
    try:
        while sent < RUNNING_CANCELS and not quiet.is_set() and not stop.wait(rng.uniform(0.5, 1.5)):
            api = rng.choice(clients)
            running = api.get("/tasks?running=1&code_name=chaos-medium&per_page=30")["tasks"]
            if running:
                cancel(api, load, rng.choice(running)["id"], "running")
                sent += 1
    except Exception as exc:
        errors.append(f"cancel thread: {type(exc).__name__}: {exc}")


def chaos(
    rig: Rig,
    disruption: Disruption,
    rng: random.Random,
    quiet: threading.Event,
    stop: threading.Event,
    errors: list[str],
) -> None:
    """SIGKILL a random runner and start it again (same id, same data directory) every few
    seconds while tasks remain (at least KILL_CYCLES times); the disruption once."""
    try:
        for cycle in range(MAX_KILL_CYCLES):
            if cycle >= KILL_CYCLES and quiet.is_set():
                return
            if stop.wait(rng.uniform(*KILL_GAP_S)):
                return
            dead = [proc for proc in rig.runners if not proc.alive()]
            if dead:
                errors.append(f"runners died by themselves: {[proc.name for proc in dead]}")
                for proc in dead:
                    rig.restart(proc, stop)
            victim = rng.choice(rig.runners)
            victim.kill()
            down = rng.uniform(*(SHORT_DOWN_S if cycle % 2 == 0 else LONG_DOWN_S))
            rig.note(f"kill -9 {victim.name}; down for {down:.1f} s")
            if stop.wait(down):
                return
            rig.restart(victim, stop)
            rig.note(f"{victim.name} started again (start {victim.starts})")
            if cycle + 1 == DISRUPTION_AFTER_CYCLE:
                if stop.wait(rng.uniform(2.0, 4.0)):
                    return
                disruption.act(rig)
    except Exception as exc:
        errors.append(f"chaos thread: {type(exc).__name__}: {exc}")
        rig.note(f"chaos thread failed: {exc}")


def wait_settled(rig: Rig, deadline: float, report: Report) -> bool:
    last = 0.0
    while True:
        counts = rig.status_counts()
        active = sum(counts[s] for s in ACTIVE)
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            report.add(f"{elapsed(rig.t0)}  progress: {dict(sorted(counts.items()))}")
            last = time.monotonic()
        if active == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def wait_no_containers(rig: Rig, timeout: float) -> tuple[list[dict[str, Any]], float]:
    started = time.monotonic()
    while True:
        if rig.runtime == "oci":
            left = oci_containers(rig.runner_data_dirs())
        else:
            left = installation_containers(rig.installation_id)
        if not left or time.monotonic() - started > timeout:
            return left, time.monotonic() - started
        time.sleep(1)
