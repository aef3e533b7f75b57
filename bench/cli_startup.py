"""How long the ``dockworker`` CLI takes to start: ``--help`` and client commands, wall time
and CPU time (user + system, less disturbed by a busy machine), optionally next to another
checkout's source tree (e.g. the commit before a change) run with the same interpreter.

    python bench/cli_startup.py                      # needs DOCKWORKER_IRON_JSON for a live service
    python bench/cli_startup.py --against /tmp/old/src --runs 15

It prints figures and ratios and asserts nothing; pytest does not collect it. Import times
in detail: ``python -X importtime -c 'import dockworker.cli.main'``."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ENTRY = "from dockworker.cli.main import main; main()"


def measure(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float, float]:
    """Minimum wall time, median wall time, median CPU time, in seconds."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return min(walls), statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--against", help="another source tree (its src/ directory) to compare with")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    base = [sys.executable, "-c", ENTRY]
    commands = [("--help", ["--help"]), ("--version", ["--version"])]
    if os.environ.get("DOCKWORKER_IRON_JSON"):
        listed = subprocess.run([*base, "tasks", "--json"], capture_output=True, text=True, check=True)
        tasks = json.loads(listed.stdout)
        commands.append(("tasks", ["tasks"]))
        if tasks:
            commands.append(("status", ["status", tasks[0]["id"]]))
    else:
        print("(set DOCKWORKER_IRON_JSON to a running service's iron.json to time client commands too)")
    trees = [("this tree", dict(os.environ))]
    if args.against:
        trees.insert(0, ("--against", {**os.environ, "PYTHONPATH": args.against}))
    print(f"{'command':<10} {'tree':<10} {'wall min':>9} {'wall med':>9} {'cpu med':>9}")
    figures: dict[str, list[float]] = {}
    for label, extra in commands:
        for tree, env in trees:
            wall_min, wall_median, cpu = measure([*base, *extra], env, args.runs)
            figures.setdefault(label, []).append(cpu)
            print(f"{label:<10} {tree:<10} {wall_min:>8.3f}s {wall_median:>8.3f}s {cpu:>8.3f}s")
        if len(figures[label]) == 2:
            print(f"{'':<10} {'ratio':<10} {'':>9} {'':>9} {figures[label][1] / figures[label][0]:>8.2f}x")


if __name__ == "__main__":
    main()
