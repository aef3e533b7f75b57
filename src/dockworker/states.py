"""The task state machine and the kinds of task events. States are stored as these strings;
never rename one.

```
queued ────┬─ claimed by a runner ─────────────────────────────▶ preparing
           └─ cancelled, package deleted ──────────────────────▶ cancelled
preparing ─┬─ container started ───────────────────────────────▶ running
           ├─ infrastructure failure, released, lease expired ─▶ queued
           ├─ setup failed, infrastructure budget spent ───────▶ error
           └─ cancelled ───────────────────────────────────────▶ cancelled
running ───┬─ exit 0 ──────────────────────────────────────────▶ complete
           ├─ exit ≠ 0, out of memory, infra budget spent ─────▶ error
           ├─ deadline ────────────────────────────────────────▶ timeout
           ├─ cancelled (container killed) ────────────────────▶ cancelled
           ├─ container killed from outside ───────────────────▶ killed
           └─ infrastructure failure, released, lease expired ─▶ queued
complete, error, timeout, cancelled, killed: terminal, no way out
```

``TRANSITIONS`` is the table the store writes by: every conditional update of a task's status
takes its ``WHERE status IN (...)`` from ``sources_of`` (``store/transitions.py``), so a
transition the table does not list cannot be written. ``docs/architecture.md`` draws the same
table.
"""

from __future__ import annotations

from collections.abc import Iterable
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
# A task leased to a runner: it counts against its package's max_concurrency.
ACTIVE = frozenset({TaskStatus.PREPARING, TaskStatus.RUNNING})

TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    # claimed; cancelled by the user or because its package was deleted
    TaskStatus.QUEUED: frozenset({TaskStatus.PREPARING, TaskStatus.CANCELLED}),
    # container started; back to the queue (infrastructure failure, released, lease expired);
    # setup failed or infrastructure budget spent; cancelled before its container started
    TaskStatus.PREPARING: frozenset(
        {TaskStatus.RUNNING, TaskStatus.QUEUED, TaskStatus.ERROR, TaskStatus.CANCELLED}
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


def in_order(states: Iterable[TaskStatus]) -> list[TaskStatus]:
    """``states`` in the order of their declaration: stable SQL text and messages."""
    wanted = set(states)
    return [status for status in TaskStatus if status in wanted]


class EventKind(StrEnum):
    """What a task event records. Stored as these strings; never rename one. A task entering a
    terminal state records an event of the state's own name."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    CONTAINER_CREATED = "container_created"
    STARTED = "started"
    READOPTED = "readopted"
    COMPLETE = "complete"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    KILLED = "killed"
    CANCEL_REQUESTED = "cancel_requested"
    RETRIED = "retried"
    INFRA_RETRY = "infra_retry"
    RELEASED = "released"
    LATE_REPORT_REFUSED = "late_report_refused"
    # The worker wrote a line to its progress channel that is not a report (the first one only).
    PROGRESS_REFUSED = "progress_refused"

    @classmethod
    def entering(cls, status: TaskStatus) -> EventKind:
        """The event of a task entering a terminal state."""
        if not status.is_terminal:
            raise ValueError(f"{status} is not a terminal state")
        return cls(status.value)
