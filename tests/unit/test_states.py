from __future__ import annotations

import re
from pathlib import Path

import pytest

import dockworker.states
from dockworker.models import TaskOutcome
from dockworker.states import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    EventKind,
    TaskStatus,
    can_transition,
    sources_of,
)

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_terminal_states_have_no_way_out() -> None:
    for status in TERMINAL:
        assert TRANSITIONS[status] == frozenset()
        assert status.is_terminal


def test_every_status_is_in_the_table() -> None:
    assert set(TRANSITIONS) == set(TaskStatus)


def test_the_lifecycle_edges() -> None:
    assert can_transition(TaskStatus.QUEUED, TaskStatus.PREPARING)
    assert can_transition(TaskStatus.PREPARING, TaskStatus.RUNNING)
    assert can_transition(TaskStatus.RUNNING, TaskStatus.TIMEOUT)
    assert can_transition(TaskStatus.RUNNING, TaskStatus.QUEUED)  # infrastructure retry
    assert not can_transition(TaskStatus.QUEUED, TaskStatus.RUNNING)
    assert not can_transition(TaskStatus.COMPLETE, TaskStatus.QUEUED)
    assert not can_transition(TaskStatus.QUEUED, TaskStatus.TIMEOUT)
    # "killed" is a container killed from outside: there is no container before "running".
    assert not can_transition(TaskStatus.PREPARING, TaskStatus.KILLED)
    assert not can_transition(TaskStatus.PREPARING, TaskStatus.COMPLETE)


def test_sources_of_timeout_is_running_only() -> None:
    assert sources_of(TaskStatus.TIMEOUT) == {TaskStatus.RUNNING}
    assert sources_of(TaskStatus.KILLED) == {TaskStatus.RUNNING}
    assert {TaskStatus.PREPARING, TaskStatus.RUNNING} == ACTIVE


def test_stored_values_never_change() -> None:
    assert [s.value for s in TaskStatus] == [
        "queued",
        "preparing",
        "running",
        "complete",
        "error",
        "cancelled",
        "killed",
        "timeout",
    ]


def _docstring_edges() -> set[tuple[TaskStatus, TaskStatus]]:
    """The edges the module docstring draws: ``source ─┬─ why ──▶ target`` lines, the source
    carried over to its ``├─``/``└─`` continuation lines."""
    edges = set()
    source: TaskStatus | None = None
    for line in (dockworker.states.__doc__ or "").splitlines():
        head = re.match(r"^(\w+) ─", line)
        if head:
            source = TaskStatus(head.group(1))
        target = re.search(r"▶ (\w+)\s*$", line)
        if target and source is not None:
            edges.add((source, TaskStatus(target.group(1))))
    return edges


def _mermaid_edges() -> set[tuple[TaskStatus, TaskStatus]]:
    text = ARCHITECTURE.read_text()
    diagram = text[text.index("stateDiagram-v2") :].split("```")[0]
    edges = set()
    for source, target in re.findall(r"^\s*(\w+) --> (\w+)", diagram, re.MULTILINE):
        edges.add((TaskStatus(source), TaskStatus(target)))
    return edges


def _table_edges() -> set[tuple[TaskStatus, TaskStatus]]:
    return {(source, target) for source, targets in TRANSITIONS.items() for target in targets}


def test_the_docstring_diagram_draws_the_table() -> None:
    assert _docstring_edges() == _table_edges()


def test_the_architecture_diagram_draws_the_table() -> None:
    assert _mermaid_edges() == _table_edges()


def test_entering_a_terminal_state_has_its_event_kind() -> None:
    assert {EventKind.entering(status) for status in TERMINAL} <= set(EventKind)
    assert EventKind.entering(TaskStatus.TIMEOUT) is EventKind.TIMEOUT
    with pytest.raises(ValueError, match="not a terminal state"):
        EventKind.entering(TaskStatus.RUNNING)


@pytest.mark.parametrize("status", sorted(set(TaskStatus) - TERMINAL))
def test_an_outcome_is_a_terminal_state(status: TaskStatus) -> None:
    with pytest.raises(ValueError, match="terminal state"):
        TaskOutcome(status=status, msg="")
