"""End-to-end cost of a no-op task: dockworker against the container it runs, on both backends,
next to a naive ``docker run`` loop. Issue 13's five sides, in one run.

A benchmark, not a test. In one invocation, on the same host, engine and image, it measures:

* baseline: ``docker run --rm --network none IMAGE true`` through the docker CLI, one at a time
  (latency) and from C concurrent workers (throughput);
* floor (Docker): the runner's own container (``runner/contract.py``'s ``container_spec`` for a
  no-op busybox package) through dockworker's Docker adapter: create, attach, start, output to
  its end, wait, remove. No store, no API, no polling;
* dockworker (Docker): the real service (``dockworker up`` as a subprocess, on a temporary data
  dir, SQLite), a no-op code package (stack busybox, command ``true``): single tasks queued one
  at a time (latency), then batches of M tasks (throughput). The client learns that a task ended
  with ``GET /tasks/{id}?wait=`` (``--learn poll`` polls instead);
* floor (OCI) and dockworker (OCI): the same two with ``--runtime oci`` (crun), when this host
  can run them (root, crun);
* with ``--pg URL``: pick-up on PostgreSQL, a dockworker (Docker) service on a throwaway
  database of that server, single tasks.

dockworker's figures against its backend's floor are what the service adds. The single-task
runs of the sides are interleaved (who goes first rotates); so are the throughput rounds. The
first ``--warmup`` runs of each side are discarded. Pick-up is queued -> claimed, from the task's
own timestamp and claim event. The figures and the ratios against issue 13's targets are printed,
and written as JSON to ``bench/results/``. See ``bench/README.md``.

Run: ``. .venv/bin/activate && python bench/e2e_latency.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from e2e.common import BENCH_LABEL, RESULTS_DIR, RUNNER_LABEL, TASK_LABEL, background_busy, log, run_text
from e2e.host import Noise, containers, host_info, remove_containers
from e2e.measure import (
    BaselineSide,
    FloorSide,
    ServiceSide,
    Side,
    measure_latency,
    measure_pg_pickup,
    measure_throughput,
    oci_unavailable,
    parse_options,
    running_service,
)
from e2e.report import render
from e2e.sides import Baseline, Floor, runner_container

from dockworker.engine import DockerEngine


def check_clean(run_label: str, runner_id: str, engines: Sequence[Any]) -> dict[str, Any]:
    remove_containers(containers(run_label))  # leftovers of an interrupted run
    left_oci = [c.id for engine in engines for c in engine.list_labelled(run_label)]
    for engine in engines:
        for container_id in left_oci:
            with contextlib.suppress(Exception):
                engine.remove(container_id)
    return {
        "dockworker_task_containers": containers(TASK_LABEL),
        "ours_left": containers(f"{RUNNER_LABEL}={runner_id}")
        + containers(f"{RUNNER_LABEL}={runner_id}-pg")
        + containers(run_label)
        + left_oci,
    }


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up like Ctrl-C does


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if not run_text(["docker", "image", "inspect", "--format", "{{.Id}}", options.image]):
        log(f"image {options.image} not found: build it with 'dockworker stacks build busybox'")
        return 2
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    run_label = f"{BENCH_LABEL}={run_id}"
    runner_id = f"bench-{run_id}"
    notes: list[str] = []
    wanted = list(options.sides)
    why_not = oci_unavailable()
    if why_not and any(side.startswith("oci-") for side in wanted):
        notes.append(f"OCI sides left out: {why_not}")
        wanted = [side for side in wanted if not side.startswith("oci-")]
    noise = Noise([run_label, f"{RUNNER_LABEL}={runner_id}", f"{RUNNER_LABEL}={runner_id}-oci"])
    if options.wait_quiet_s > 0 and (noise.foreign() or background_busy(1.0) >= 0.25):
        log(f"the host or engine is busy: waiting up to {options.wait_quiet_s:.0f} s for a quiet host")
        if not noise.wait_quiet(options.wait_quiet_s):
            log("still busy: measuring anyway (the figures will be noisy)")
            notes.append("the host was not quiet when the run started")
    host = host_info()
    host["background_busy_start"] = background_busy(2.0)
    baseline = Baseline(options.image, run_label)
    result: dict[str, Any] = {"run_id": run_id, "options": asdict(options), "host": host, "notes": notes}
    result["baseline_command"] = baseline.command
    work = Path(tempfile.mkdtemp(prefix="dockworker-bench-floor-"))
    docker_engine = DockerEngine(pool_size=16)
    engines: list[Any] = [docker_engine]
    try:
        with contextlib.ExitStack() as stack:
            spec = runner_container(work / "spec", run_label, f"{runner_id}-floor")
            sides: dict[str, Side] = {}
            poll_s = options.poll_s
            batch_poll_s = options.batch_poll_ms / 1000 if options.learn == "poll" else None
            for name in wanted:
                if name == "baseline":
                    sides[name] = BaselineSide(baseline, options.concurrency)
                elif name == "floor":
                    sides[name] = FloorSide(Floor(name, docker_engine, spec), options.slots)
                elif name == "oci-floor":
                    from dockworker.engine.oci import OciEngine

                    oci = OciEngine(work / "oci", docker_engine, runtime="crun")
                    stack.callback(oci.close)
                    engines.append(oci)
                    sides[name] = FloorSide(Floor(name, oci, spec), options.slots)
                else:
                    runtime = "oci" if name.startswith("oci-") else "docker"
                    service = stack.enter_context(
                        running_service(
                            options, runner_id + ("-oci" if runtime == "oci" else ""), runtime=runtime
                        )
                    )
                    service.upload_noop()
                    result["dockworker_version"] = service.version
                    log(f"dockworker ({runtime}) {service.version}: port {service.port}, pid {service.pid}")
                    sides[name] = ServiceSide(service, poll_s, batch_poll_s)
            noise.sample()
            result["latency"] = measure_latency(options, sides, noise)
            result["throughput"] = measure_throughput(options, sides, noise)
            noise.sample()
        if options.pg_url:
            log("pick-up on PostgreSQL")
            result["postgresql"] = measure_pg_pickup(options, run_id, runner_id)
    finally:
        clean = check_clean(run_label, runner_id, engines)
        docker_engine.close()
        shutil.rmtree(work, ignore_errors=True)
        log(f"containers left by this run: {len(clean['ours_left'])}")
    host["loadavg_end"] = os.getloadavg()
    host["background_busy_end"] = background_busy(2.0)
    result["noise"] = noise.summary()
    result["cleanup"] = clean
    print(render(result))
    left = clean["dockworker_task_containers"]
    print(
        f"\nclean-up: services stopped with SIGTERM, temp dirs removed; "
        f"docker ps -a --filter label={TASK_LABEL}: " + ("empty" if not left else " ".join(left))
    )
    if left:
        print(f"  of these, left by this run: {len(clean['ours_left'])} (the others belong to other runners)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"e2e_latency-{run_id}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures written to {out}")
    return 1 if clean["ours_left"] else 0


if __name__ == "__main__":
    sys.exit(main())
