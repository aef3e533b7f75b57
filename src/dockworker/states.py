"""The task state machine. States are stored as these strings; never rename one.

```
queued ──claim──▶ preparing ──container started──▶ running ──exit 0──────▶ complete
  │  ▲               │                                │  ├──exit ≠ 0 / OOM──▶ error
  │  └─infra retry───┴────────────────────────────────┘  ├──deadline─────────▶ timeout
  │                  │                                   ├──user cancel──────▶ cancelled
  └──user cancel─────┴──────▶ cancelled                  └──killed from outside▶ killed
```

``preparing`` and ``running`` may also end in ``error`` (task setup failed, or the
infrastructure retry budget is spent).
"""

from __future__ import annotations

from enum import StrEnum

# The msg of a task (or schedule) cancelled at the user's request.
CANCELLED_MSG = "cancelled by user"


class TaskStatus(StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"
    KILLED = "killed"
    TIMEOUT = "timeout"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {TaskStatus.COMPLETE, TaskStatus.ERROR, TaskStatus.CANCELLED, TaskStatus.KILLED, TaskStatus.TIMEOUT}
)
ACTIVE = frozenset({TaskStatus.PREPARING, TaskStatus.RUNNING})

TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.QUEUED: frozenset({TaskStatus.PREPARING, TaskStatus.CANCELLED}),
    TaskStatus.PREPARING: frozenset(
        {TaskStatus.RUNNING, TaskStatus.QUEUED, TaskStatus.ERROR, TaskStatus.CANCELLED, TaskStatus.KILLED}
    ),
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.QUEUED,
            TaskStatus.COMPLETE,
            TaskStatus.ERROR,
            TaskStatus.CANCELLED,
            TaskStatus.KILLED,
            TaskStatus.TIMEOUT,
        }
    ),
    **{status: frozenset() for status in TERMINAL},
}


def can_transition(current: TaskStatus, new: TaskStatus) -> bool:
    return new in TRANSITIONS[current]


def sources_of(new: TaskStatus) -> frozenset[TaskStatus]:
    """The states from which ``new`` may be entered."""
    return frozenset(state for state, targets in TRANSITIONS.items() if new in targets)
