"""Writing a task's status by the table in ``states.TRANSITIONS``.

Every change of ``tasks.status`` is a conditional update whose ``WHERE status IN (...)`` comes
from ``sources_of(target)``: a transition the table does not list matches no row, so it cannot be
written. The claim statements (text SQL, one per dialect) take their state lists from here too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..states import ACTIVE, TaskStatus, in_order, sources_of
from .schema import status_sql, tasks


def values_of(states: Iterable[TaskStatus]) -> list[str]:
    return [status.value for status in in_order(states)]


def claim_sql(alias: str) -> tuple[str, str]:
    """For a claim statement: the condition on a claimable task (the states a task is claimed
    from) and on a leased one, for the table ``alias``."""
    return (
        status_sql(sources_of(TaskStatus.PREPARING), f"{alias}.status"),
        status_sql(ACTIVE, f"{alias}.status"),
    )


def status_in(states: Iterable[TaskStatus]) -> sa.ColumnElement[bool]:
    """``tasks.status`` is one of the states, written as literals as ``schema.status_sql`` writes
    them (SQLite matches a query's condition to a partial index's only on the same literals)."""
    values: list[sa.ColumnElement[str]] = [sa.literal_column(f"'{value}'") for value in values_of(states)]
    if len(values) == 1:
        return tasks.c.status == values[0]
    return tasks.c.status.in_(values)


# These conditions never change: built once (a statement's parts are immutable and shareable).
@functools.cache
def enterable(target: TaskStatus) -> sa.ColumnElement[bool]:
    """The task's status is one that ``target`` may be entered from."""
    return status_in(sources_of(target))


@functools.cache
def is_active() -> sa.ColumnElement[bool]:
    return status_in(ACTIVE)


@functools.cache
def is_queued() -> sa.ColumnElement[bool]:
    return status_in([TaskStatus.QUEUED])


def held_by(runner_id: str) -> sa.ColumnElement[bool]:
    """The tasks leased to the runner: the ownership check, in one place."""
    return sa.and_(tasks.c.runner_id == runner_id, is_active())


def leased(task_id: str, runner_id: str) -> sa.ColumnElement[bool]:
    """The task, if it is leased to the runner (its report is refused otherwise)."""
    return sa.and_(tasks.c.id == task_id, held_by(runner_id))


# The names the task and the runner are bound to in a leased transition's statement.
LEASE_TASK_ID = "lease_task_id"
LEASE_RUNNER_ID = "lease_runner_id"


@functools.cache
def _leased_bound() -> sa.ColumnElement[bool]:
    """:func:`leased` with the task and the runner bound when the statement runs."""
    return sa.and_(
        tasks.c.id == sa.bindparam(LEASE_TASK_ID),
        tasks.c.runner_id == sa.bindparam(LEASE_RUNNER_ID),
        is_active(),
    )


def leased_transition(target: TaskStatus, **fixed: Any) -> sa.Update:
    """The move to ``target`` of a task leased to a runner, as a statement to build once and run
    many times with :func:`run_leased_transition` (a runner's reports are most of a task's
    writes, and building, coercing and keying a statement was most of a report's cost).
    ``fixed``: values the same every time (SQL expressions included); the others are given
    when it runs. It returns the moved row."""
    return (
        tasks.update()
        .where(_leased_bound(), enterable(target))
        .values(status=target.value, **fixed)
        .returning(tasks)
    )


def run_leased_transition(
    conn: Connection, statement: sa.Update, task_id: str, runner_id: str, **values: Any
) -> sa.Row[Any] | None:
    """Run a :func:`leased_transition` for this task and runner, setting ``values`` too; the
    task's row as the move left it, or None when it did not move (the lease is lost, or the
    table refuses the move)."""
    return conn.execute(statement, {LEASE_TASK_ID: task_id, LEASE_RUNNER_ID: runner_id, **values}).first()


def transition(conn: Connection, target: TaskStatus, where: sa.ColumnElement[bool], **values: Any) -> int:
    """Move the tasks matching ``where`` to ``target`` if the table allows it from their current
    state; returns how many moved."""
    result = conn.execute(
        tasks.update().where(where, enterable(target)).values(status=target.value, **values)
    )
    return int(result.rowcount or 0)
