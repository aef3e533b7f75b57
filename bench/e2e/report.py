"""The report: figures, ratios against issue 13's targets, warnings."""

from __future__ import annotations

from typing import Any

from e2e.common import (
    OCI_P50_OF_DOCKER_FLOOR,
    OCI_TPUT_OF_DOCKER_FLOOR,
    P50_TARGET,
    PICKUP_TARGET_MS,
    SERVICE_CPU_TARGET_MS,
    THROUGHPUT_TARGET,
)


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else "met" if ok else "NOT met"


SPLIT_KEYS = (
    "post_to_queued",
    "queued_to_claimed",
    "claimed_to_container_created",
    "container_created_to_started",
    "started_to_finished",
    "finished_to_seen",
    "post_to_finished",
)


def render_header(result: dict[str, Any]) -> list[str]:
    host, options = result["host"], result["options"]
    learn = "GET ?wait" if options["learn"] == "wait" else f"polling every {fmt(options['poll_ms'], 0)} ms"
    return [
        f"host: {host['cores']} cores ({host['cpu_model']}), kernel {host['kernel']}, "
        f"Python {host['python']}",
        f"docker: engine {host['docker_server']} (API {host['docker_api']}), CLI {host['docker_client']}; "
        f"dockworker {result.get('dockworker_version', '?')}",
        f"run: n={options['n']} single tasks per side (+{options['warmup']} warm-up discarded, interleaved), "
        f"batch={options['batch']} x {options['rounds']} round(s), slots={options['slots']} (floors: "
        f"{options['slots']} threads), baseline concurrency={options['concurrency']}; client learns ends "
        f"by {learn}",
        f"baseline: {' '.join(result['baseline_command'])}",
        f"load average at the start {host['loadavg_start'][0]:.2f}, at the end {host['loadavg_end'][0]:.2f}",
        "",
    ]


def render_sides(result: dict[str, Any]) -> list[str]:
    lat, thr = result["latency"], result["throughput"]
    lines = [
        f"{'side':16}{'p50 ms':>9}{'p90':>8}{'min':>8}{'max':>8}{'tasks/s':>9}{'host CPU':>10}"
        f"{'svc CPU':>9}{'svc CPU 1':>11}{'pick-up':>9}",
        f"{'':49}{'':>9}{'ms/task':>10}{'ms/task':>9}{'ms/task':>11}{'p50 ms':>9}",
    ]
    for name in lat:
        total, run = lat[name]["total_ms"], thr.get(name, {})
        split = lat[name].get("split_ms", {}).get("queued_to_claimed", {})
        lines.append(
            f"{name:16}{fmt(total['p50']):>9}{fmt(total['p90']):>8}{fmt(total['min']):>8}{fmt(total['max']):>8}"
            f"{fmt(run.get('tasks_per_s'), 2):>9}{fmt(run.get('host_cpu_ms_per_task'), 0):>10}"
            f"{fmt(run.get('service_cpu_ms_per_task')):>9}{fmt(lat[name].get('service_cpu_ms_per_task')):>11}"
            f"{fmt(split.get('p50')):>9}"
        )
    lines.append(
        "svc CPU: the dockworker process's CPU per task in the throughput batches; svc CPU 1: per "
        "single task (its POST and its ?wait included)"
    )
    return lines


def target_rows(result: dict[str, Any]) -> list[tuple[str, str, float | None, bool | None]]:
    """(backend, what, figure, met) for each of issue 13's targets."""
    lat, thr = result["latency"], result["throughput"]
    rows: list[tuple[str, str, float | None, bool | None]] = []
    for prefix, backend in (("", "docker"), ("oci-", "oci")):
        service, floor = f"{prefix}dockworker", f"{prefix}floor"
        if service not in lat:
            continue
        if floor in lat:
            p50 = ratio(lat[service]["total_ms"]["p50"], lat[floor]["total_ms"]["p50"])
            rows.append(
                (
                    backend,
                    f"p50 / floor p50 (<= {P50_TARGET})",
                    p50,
                    None if p50 is None else p50 <= P50_TARGET,
                )
            )
            tput = ratio(thr.get(service, {}).get("tasks_per_s"), thr.get(floor, {}).get("tasks_per_s"))
            rows.append(
                (
                    backend,
                    f"tasks/s / floor tasks/s (>= {THROUGHPUT_TARGET})",
                    tput,
                    None if tput is None else tput >= THROUGHPUT_TARGET,
                )
            )
        cpu = thr.get(service, {}).get("service_cpu_ms_per_task")
        rows.append(
            (
                backend,
                f"service CPU ms/task (<= {SERVICE_CPU_TARGET_MS:.0f})",
                cpu,
                None if cpu is None else cpu <= SERVICE_CPU_TARGET_MS,
            )
        )
        pickup = lat[service]["split_ms"].get("queued_to_claimed", {}).get("p50")
        rows.append(
            (
                f"{backend}/SQLite",
                f"pick-up p50 ms (<= {PICKUP_TARGET_MS:.0f})",
                pickup,
                None if pickup is None else pickup <= PICKUP_TARGET_MS,
            )
        )
    # Part 2: the OCI backend against the Docker floor, the side and the backend's own floor
    if "floor" in lat:
        for side in ("oci-dockworker", "oci-floor"):
            if side not in lat:
                continue
            p50 = ratio(lat[side]["total_ms"]["p50"], lat["floor"]["total_ms"]["p50"])
            met = None if p50 is None else p50 <= OCI_P50_OF_DOCKER_FLOOR
            rows.append(("oci", f"{side} p50 / Docker floor p50 (<= {OCI_P50_OF_DOCKER_FLOOR})", p50, met))
            tput = ratio(thr.get(side, {}).get("tasks_per_s"), thr.get("floor", {}).get("tasks_per_s"))
            met = None if tput is None else tput >= OCI_TPUT_OF_DOCKER_FLOOR
            rows.append(
                ("oci", f"{side} tasks/s / Docker floor's (>= {OCI_TPUT_OF_DOCKER_FLOOR:.0f})", tput, met)
            )
    pg = result.get("postgresql")
    if pg:
        pickup = pg["split_ms"].get("queued_to_claimed", {}).get("p50")
        rows.append(
            (
                "docker/PostgreSQL",
                f"pick-up p50 ms (<= {PICKUP_TARGET_MS:.0f})",
                pickup,
                None if pickup is None else pickup <= PICKUP_TARGET_MS,
            )
        )
    return rows


def render_targets(result: dict[str, Any]) -> list[str]:
    lines = ["", "issue 13's targets (ratios within this run):"]
    for backend, what, figure, met in target_rows(result):
        lines.append(f"  {backend:18}{what:52}{fmt(figure, 2):>8}  {verdict(met)}")
    lat = result["latency"]
    if "baseline" in lat and "dockworker" in lat:
        base = ratio(lat["dockworker"]["total_ms"]["p50"], lat["baseline"]["total_ms"]["p50"])
        lines.append(f"  (dockworker p50 / naive docker run p50: {fmt(base, 2)})")
    for prefix in ("", "oci-"):
        service, floor = f"{prefix}dockworker", f"{prefix}floor"
        if service in lat and floor in lat:
            added = lat[service]["total_ms"]["p50"] - lat[floor]["total_ms"]["p50"]
            backend = "OCI" if prefix else "Docker"
            lines.append(
                f"  what the service adds to a single task on {backend} (p50 - floor p50): {fmt(added)} ms"
            )
    return lines


def render_details(result: dict[str, Any]) -> list[str]:
    lat, thr = result["latency"], result["throughput"]
    lines = [""]
    for name, figures in lat.items():
        if "split_ms" in figures:
            lines.append(f"{name} single task, where the time goes (server timestamps, ms, p50 / p90):")
            split = figures["split_ms"]
            lines += [
                f"  {k:32}{fmt(split[k]['p50']):>8}{fmt(split[k]['p90']):>8}"
                for k in SPLIT_KEYS
                if k in split
            ]
            lines.append(
                f"  requests per task {fmt(figures['requests_per_task'])}, answer time p50 "
                f"{fmt(figures['request_rtt_ms'], 2)} ms"
            )
        if "phases_ms" in figures:
            phases = ", ".join(f"{k} {fmt(v['p50'])}" for k, v in figures["phases_ms"].items())
            lines.append(f"{name} phases (ms, p50): {phases}")
    pg = result.get("postgresql")
    if pg:
        lines.append("dockworker (Docker) on PostgreSQL, single tasks (ms, p50 / p90):")
        lines += [
            f"  {k:32}{fmt(pg['split_ms'][k]['p50']):>8}{fmt(pg['split_ms'][k]['p90']):>8}"
            for k in SPLIT_KEYS
            if k in pg["split_ms"]
        ]
        lines.append(f"  total {fmt(pg['total_ms']['p50'])} / {fmt(pg['total_ms']['p90'])}")
    lines.append("")
    for name, results in thr.items():
        for index, run in enumerate(results["rounds"], 1):
            line = (
                f"throughput {name:15} round {index}: {run['tasks']} tasks in {fmt(run['wall_s'], 2)} s = "
                f"{fmt(run['tasks_per_s'], 2)}/s, host CPU {fmt(run['host_cpu_ms_per_task'], 0)} ms/task"
            )
            if "service_cpu_ms_per_task" in run:
                line += (
                    f" (service process {fmt(run['service_cpu_ms_per_task'], 1)}, "
                    f"bench {fmt(run['bench_self_cpu_ms_per_task'], 0)}); client saw it at "
                    f"{fmt(run['client_seen_s'], 2)} s after {run['client_requests']} requests; slots busy: "
                    f"mean {fmt(run['mean_slots_busy'], 1)} max {run['max_slots_busy']}, {run['statuses']}"
                )
            lines.append(line)
    return lines


def render_warnings(result: dict[str, Any]) -> list[str]:
    lat, host, noise = result["latency"], result["host"], result["noise"]
    lines = []
    for name, figures in lat.items():
        if figures.get("failed"):
            lines.append(f"WARNING: {len(figures['failed'])} {name} single task(s) did not complete")
        if figures.get("infra_retried"):
            lines.append(
                f"WARNING: {len(figures['infra_retried'])} {name} single task(s) were retried after an "
                "infrastructure error; their latency includes the retry"
            )
    for name, results in result["throughput"].items():
        for run in results["rounds"]:
            for problem in run.get("not_complete", []):
                lines.append(
                    f"WARNING: {name} batch task {problem['id']} ended {problem['status']}: {problem['msg']}"
                )
    lines.append(
        f"other load: CPUs {host['background_busy_start']:.0%} busy before the run, "
        f"{host['background_busy_end']:.0%} after (2 s idle each)"
    )
    lines.append(
        f"other containers on the engine in {noise['samples_with_foreign']} of {noise['samples']} samples "
        f"(max {noise['max_foreign']})"
        + ("  <- shared engine: figures are noisy" if noise["samples_with_foreign"] else "")
    )
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return lines


def render(result: dict[str, Any]) -> str:
    lines = render_header(result)
    lines += render_sides(result)
    lines += render_targets(result)
    lines += render_details(result)
    lines += render_warnings(result)
    return "\n".join(lines)
