"""``dockworker up``, with the runner's orphan reaping limited to the runner's own containers.

The runner's ``reap_orphans`` (at start and every 30 s) removes every container labelled
``dockworker.task`` whose task its own store does not consider running. On an engine shared
with other dockworker processes (for instance test runs with their own stores) that removes
their containers too. The benchmark starts a throw-away service on such a shared engine, so by
default it runs it through this module, which changes only that: the reaper sees only the
containers labelled with this runner's id. Reaping is off the task path (a watcher thread), so
the figures are the same as with the plain ``dockworker up`` (``e2e_latency.py --unguarded``).

Usage: ``python bench/guarded_up.py up --data-dir ... --port ... --slots ...``
"""

from __future__ import annotations

import sys

from dockworker.cli.main import main
from dockworker.engine.adapter import RUNNER_LABEL, TASK_LABEL, ContainerInfo, DockerEngine
from dockworker.runner import Runner

_original_reap = Runner.reap_orphans


def _reap_own_containers_only(self: Runner) -> int:
    engine = self.engine
    if "list_labelled" not in vars(engine):
        runner_id = self.runner_id

        def own(label: str = TASK_LABEL) -> list[ContainerInfo]:
            found = DockerEngine.list_labelled(engine, label)
            return [c for c in found if c.labels.get(RUNNER_LABEL) == runner_id]

        engine.list_labelled = own  # type: ignore[method-assign]
    return _original_reap(self)


Runner.reap_orphans = _reap_own_containers_only  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "dockworker"
    main()
