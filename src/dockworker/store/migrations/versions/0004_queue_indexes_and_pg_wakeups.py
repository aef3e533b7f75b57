"""queue indexes for a flat claim; on PostgreSQL, the per-package claim lock and NOTIFY wake-ups

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

The two partial indexes hold queued tasks only, in the claim's two orders: starved tasks oldest
first, the others by priority, then age. They keep the claim's cost independent of the queue's
length.

On PostgreSQL:

- ``dockworker_package_has_room(code_id, max_concurrency)`` is the claim's max_concurrency check.
  It takes a transaction advisory lock keyed by the package (held until the claim commits), and
  only then counts the package's preparing and running tasks. A VOLATILE function's query takes
  a fresh snapshot, so the count includes every claim committed before the lock was granted.
  Two claims therefore never count the same package at the same time. ``pg_try_...`` never
  waits: a claimer that finds the lock taken skips the package, as SKIP LOCKED skips rows, and
  that rules out deadlocks between claimers.
- Triggers send ``NOTIFY dockworker_tasks`` (payload: the cluster, or '' for any) in the same
  transaction as the change: a task queued (inserted or re-queued), a task of a package with
  max_concurrency leaving preparing/running, or a package resumed or given more room. Runners
  LISTEN and claim at once. The notification is only a hint: runners still poll.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

QUEUED = sa.text("status = 'queued'")

PG_UPGRADE = [
    """
    CREATE FUNCTION dockworker_package_has_room(p_code_id varchar, p_max_concurrency integer)
    RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        IF NOT pg_try_advisory_xact_lock(1685547890, hashtext(p_code_id)) THEN
            RETURN false;
        END IF;
        RETURN (SELECT count(*) FROM tasks
                 WHERE code_id = p_code_id AND status IN ('preparing', 'running')) < p_max_concurrency;
    END
    $$
    """,
    """
    CREATE FUNCTION dockworker_notify_task() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.status = 'queued'
           OR EXISTS (SELECT 1 FROM codes WHERE id = NEW.code_id AND max_concurrency > 0) THEN
            PERFORM pg_notify('dockworker_tasks', NEW.cluster);
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER dockworker_task_queued AFTER INSERT ON tasks
    FOR EACH ROW WHEN (NEW.status = 'queued')
    EXECUTE FUNCTION dockworker_notify_task()
    """,
    """
    CREATE TRIGGER dockworker_task_moved AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (
        OLD.status IS DISTINCT FROM NEW.status
        AND (NEW.status = 'queued'
             OR (OLD.status IN ('preparing', 'running') AND NEW.status NOT IN ('preparing', 'running'))))
    EXECUTE FUNCTION dockworker_notify_task()
    """,
    """
    CREATE FUNCTION dockworker_notify_package() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('dockworker_tasks', '');
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER dockworker_package_opened AFTER UPDATE OF paused, max_concurrency ON codes
    FOR EACH ROW WHEN (
        (OLD.paused AND NOT NEW.paused)
        OR (OLD.max_concurrency IS DISTINCT FROM NEW.max_concurrency))
    EXECUTE FUNCTION dockworker_notify_package()
    """,
]

PG_DOWNGRADE = [
    "DROP TRIGGER dockworker_package_opened ON codes",
    "DROP FUNCTION dockworker_notify_package()",
    "DROP TRIGGER dockworker_task_moved ON tasks",
    "DROP TRIGGER dockworker_task_queued ON tasks",
    "DROP FUNCTION dockworker_notify_task()",
    "DROP FUNCTION dockworker_package_has_room(varchar, integer)",
]


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.create_index(
            "ix_tasks_queue_priority",
            [sa.text("priority DESC"), "run_at", "id"],
            postgresql_where=QUEUED,
            sqlite_where=QUEUED,
        )
        batch_op.create_index(
            "ix_tasks_queue_age", ["run_at", "id"], postgresql_where=QUEUED, sqlite_where=QUEUED
        )
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_DOWNGRADE:
            op.execute(statement)
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.drop_index("ix_tasks_queue_age")
        batch_op.drop_index("ix_tasks_queue_priority")
