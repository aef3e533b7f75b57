"""The verdict of a chaos run, read from the database and the engine's own record: every task
queued is in the store and terminal; its terminal state was written exactly once; its container
starts (``docker events``) equal its recorded attempts. Each check adds its figures to the
report, and a failure for each problem it finds."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from .chaos_load import EXPECTED, KIND_WEIGHTS, Load
from .rig import Report, Rig
from .support import TERMINAL


def check_tasks(rig: Rig, load: Load, report: Report) -> dict[str, tuple[str, int, str]]:
    rows = rig.query("SELECT id, status, attempts, code_name, coalesce(msg, '') FROM tasks")
    tasks = {row[0]: (row[1], int(row[2]), row[4]) for row in rows}
    counts = Counter(status for status, _, _ in tasks.values())
    report.add(f"tasks queued: {len(load.kinds)}; in the store: {len(tasks)}")
    report.add("per status: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    lost = sorted(set(load.kinds) - set(tasks))
    extra = sorted(set(tasks) - set(load.kinds))
    unfinished = sorted(t for t, (status, _, _) in tasks.items() if status not in TERMINAL)
    report.add(f"lost: {len(lost)}; unexpected: {len(extra)}; not terminal: {len(unfinished)}")
    if lost or extra or unfinished:
        report.fail(f"lost {lost[:10]}, unexpected {extra[:10]}, not terminal {unfinished[:10]}")

    per_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for task_id, kind in load.kinds.items():
        per_kind[kind][tasks.get(task_id, ("lost", 0, ""))[0]] += 1
    for kind in KIND_WEIGHTS:
        outcome = ", ".join(f"{s} {n}" for s, n in sorted(per_kind[kind].items()))
        report.add(f"  chaos-{kind:<8} (expected {EXPECTED[kind]}): {outcome}")
    unusual = Counter(
        (load.kinds[t], status, msg[:70])
        for t, (status, _, msg) in tasks.items()
        if t in load.kinds and status != EXPECTED[load.kinds[t]] and status != "cancelled"
    )
    for (kind, status, msg), count in sorted(unusual.items()):
        report.add(f"  not as expected: {count} x chaos-{kind} {status}: {msg!r}")
    errors = [
        (t, msg)
        for t, (status, _, msg) in tasks.items()
        if status == "error" and t in load.kinds and load.kinds[t] != "fail"
    ]
    for task_id, msg in sorted(errors)[:10]:
        report.add(f"    {task_id} error: {msg[:300]}")

    said_cancelled = [t for t, answer in load.cancel_answers.items() if answer == "cancelled"]
    wrong = [t for t in said_cancelled if tasks.get(t, ("lost",))[0] != "cancelled"]
    by_when = Counter(load.cancels.values())
    report.add(
        f"cancels sent: {by_when['queued']} while queued, {by_when['running']} while running; answers "
        + ", ".join(f"{a} {n}" for a, n in sorted(Counter(load.cancel_answers.values()).items()))
    )
    if wrong:
        report.fail(f"the API answered 'cancelled' but the task ended otherwise: {wrong[:10]}")
    return tasks


def check_terminal_events(rig: Rig, tasks: dict[str, tuple[str, int, str]], report: Report) -> None:
    """Each task's terminal state is written exactly once (no double report)."""
    terminal = tuple(sorted(TERMINAL))
    rows = rig.query(
        "SELECT task_id, array_agg(kind ORDER BY id) FROM task_events WHERE kind = ANY(%s) GROUP BY task_id",
        list(terminal),
    )
    written = {task_id: list(kinds) for task_id, kinds in rows}
    problems = [
        f"{task_id}: status {status}, terminal events {written.get(task_id, [])}"
        for task_id, (status, _, _) in tasks.items()
        if written.get(task_id, []) != [status]
    ]
    kinds = rig.query("SELECT kind, count(*) FROM task_events GROUP BY kind ORDER BY kind")
    report.add("task events: " + ", ".join(f"{kind} {count}" for kind, count in kinds))
    reasons = rig.query(
        "SELECT regexp_replace(left(detail, 90), '^attempt [0-9]+: |[0-9a-f]{12,}', '', 'g') AS reason,"
        " count(*) FROM task_events WHERE kind = 'infra_retry' GROUP BY reason ORDER BY count(*) DESC"
    )
    for reason, count in reasons:
        report.add(f"  infra_retry {count} x {reason}")
    for task_id, detail in rig.query(
        "SELECT task_id, detail FROM task_events WHERE kind = 'late_report_refused' ORDER BY id"
    ):
        report.add(f"  late_report_refused {task_id}: {detail} (task {tasks.get(task_id, ('?',))[0]})")
    report.add(f"tasks whose terminal state was not written exactly once: {len(problems)}")
    if problems:
        report.fail("terminal state not written exactly once: " + "; ".join(problems[:10]))


def check_executions(
    rig: Rig, tasks: dict[str, tuple[str, int, str]], starts: dict[str, list[dict[str, Any]]], report: Report
) -> None:
    attempts = sum(n for _, n, _ in tasks.values())
    executions = sum(len(found) for task_id, found in starts.items() if task_id in tasks)
    stray = {task_id: found for task_id, found in starts.items() if task_id not in tasks}
    mismatched = {
        task_id: (n, len(starts.get(task_id, [])))
        for task_id, (_, n, _) in tasks.items()
        if n != len(starts.get(task_id, []))
    }
    witness = "the OCI runtime was asked to run" if rig.runtime == "oci" else "seen on the engine"
    report.add(
        f"container starts {witness}: {executions}; attempts recorded: {attempts}; "
        f"tasks whose starts != attempts: {len(mismatched)}"
    )
    for task_id, (n, seen) in sorted(mismatched.items())[:20]:
        events = rig.query(
            "SELECT round(at::numeric, 3), kind, detail FROM task_events WHERE task_id = %s ORDER BY id",
            task_id,
        )
        report.add(f"  {task_id}: attempts {n}, starts {seen} {starts.get(task_id, [])}")
        for at, kind, detail in events:
            report.add(f"      {at} {kind} {detail}")
    if stray:
        report.fail(f"starts of containers for tasks not in the store: {stray}")
    if mismatched:
        listed = "; ".join(f"{t}: attempts {n}, starts {seen}" for t, (n, seen) in sorted(mismatched.items()))
        report.fail(f"{len(mismatched)} task(s) whose container starts differ from their attempts: {listed}")
