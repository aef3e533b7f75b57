"""PostgreSQL: one NOTIFY per inserting statement and cluster, not a trigger call per task

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27

A batch of 1,000 tasks ran the row trigger of 0004 a thousand times (a third of the insert's
time); the statement trigger reads the inserted rows once (a transition table) and notifies
each of their clusters. What runners receive is the same.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = [
    """
    CREATE FUNCTION dockworker_notify_tasks_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        queued_cluster text;
    BEGIN
        FOR queued_cluster IN SELECT DISTINCT cluster FROM inserted WHERE status = 'queued' LOOP
            PERFORM pg_notify('dockworker_tasks', queued_cluster);
        END LOOP;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER dockworker_tasks_inserted AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION dockworker_notify_tasks_inserted()
    """,
    "DROP TRIGGER dockworker_task_queued ON tasks",
]

DOWNGRADE = [
    """
    CREATE TRIGGER dockworker_task_queued AFTER INSERT ON tasks
    FOR EACH ROW WHEN (NEW.status = 'queued')
    EXECUTE FUNCTION dockworker_notify_task()
    """,
    "DROP TRIGGER dockworker_tasks_inserted ON tasks",
    "DROP FUNCTION dockworker_notify_tasks_inserted()",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in DOWNGRADE:
            op.execute(statement)
