"""Names shared across the code base: the labels every task container carries, and the paths
of the worker contract inside a container."""

from __future__ import annotations

LABEL_PREFIX = "dockworker."
TASK_LABEL = LABEL_PREFIX + "task"
RUNNER_LABEL = LABEL_PREFIX + "runner"
INSTALLATION_LABEL = LABEL_PREFIX + "installation"

# The code package, read-only, and the working directory.
CODE_DIR = "/mnt/code"
# The task's writable scratch tmpfs (also $HOME); payload and config are bound into it.
TASK_DIR = "/mnt/task"
PAYLOAD_NAME = "payload.json"
CONFIG_NAME = "config.json"
# The progress channel, a FIFO the runner reads (runner/progress.py), bound into the task dir.
PROGRESS_NAME = "progress"
