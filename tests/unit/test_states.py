from __future__ import annotations

from dockworker.states import ACTIVE, TERMINAL, TRANSITIONS, TaskStatus, can_transition, sources_of


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


def test_sources_of_timeout_is_running_only() -> None:
    assert sources_of(TaskStatus.TIMEOUT) == {TaskStatus.RUNNING}
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
