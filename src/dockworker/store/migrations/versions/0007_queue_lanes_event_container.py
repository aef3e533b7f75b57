"""a claim whose cost does not grow with the queue; listings by index; events name their container

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

- ``ix_tasks_queue_lane`` (code_id, cluster, priority, run_at, id) over queued tasks replaces the
  claim's two orders of 0004 (``ix_tasks_queue_priority``, ``ix_tasks_queue_age``) and the old
  ``ix_tasks_claim``: the claim skips through it package by package and reads the head of each
  open lane, so paused or saturated packages, delayed tasks and other clusters cost it one probe
  each, not a walk of their backlog.
- ``ix_tasks_active`` (code_id) over leased tasks: a package's count under max_concurrency,
  lease expiry, the reaper.
- ``ix_tasks_leased`` (runner_id) over leased tasks replaces ``ix_tasks_runner_status``: a
  runner's tasks; queued and finished tasks are in neither of the two (an enqueue or a
  cancel_all of a million tasks does not write them).
- ``ix_tasks_project_listing`` (project_id, created_at, id) replaces ``ix_tasks_project_created``:
  a listing's page comes from the index alone.
- ``task_events.container_id``: the container an event is about, as data. Earlier ``started``
  events get the short id their detail text carries.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

QUEUED = sa.text("status = 'queued'")
ACTIVE = sa.text("status IN ('preparing', 'running')")
PREFIX = "container "


def upgrade() -> None:
    op.create_index(
        "ix_tasks_queue_lane",
        "tasks",
        ["code_id", "cluster", "priority", "run_at", "id"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
    op.create_index("ix_tasks_active", "tasks", ["code_id"], postgresql_where=ACTIVE, sqlite_where=ACTIVE)
    op.create_index("ix_tasks_leased", "tasks", ["runner_id"], postgresql_where=ACTIVE, sqlite_where=ACTIVE)
    op.create_index("ix_tasks_project_listing", "tasks", ["project_id", "created_at", "id"])
    for name in (
        "ix_tasks_queue_priority",
        "ix_tasks_queue_age",
        "ix_tasks_claim",
        "ix_tasks_project_created",
        "ix_tasks_runner_status",
    ):
        op.drop_index(name, table_name="tasks")
    with op.batch_alter_table("task_events") as batch_op:
        batch_op.add_column(sa.Column("container_id", sa.String(64), nullable=True))
    op.execute(
        sa.text(
            "UPDATE task_events SET container_id = substr(detail, :start, 12)"
            " WHERE kind = 'started' AND detail LIKE :pattern"
        ).bindparams(start=len(PREFIX) + 1, pattern=PREFIX + "%")
    )


def downgrade() -> None:
    with op.batch_alter_table("task_events") as batch_op:
        batch_op.drop_column("container_id")
    op.create_index("ix_tasks_project_created", "tasks", ["project_id", "created_at"])
    op.create_index("ix_tasks_runner_status", "tasks", ["runner_id", "status"])
    op.create_index("ix_tasks_claim", "tasks", ["status", "cluster", "priority", "run_at"])
    op.create_index(
        "ix_tasks_queue_priority",
        "tasks",
        [sa.text("priority DESC"), "run_at", "id"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
    op.create_index(
        "ix_tasks_queue_age", "tasks", ["run_at", "id"], postgresql_where=QUEUED, sqlite_where=QUEUED
    )
    for name in ("ix_tasks_project_listing", "ix_tasks_leased", "ix_tasks_active", "ix_tasks_queue_lane"):
        op.drop_index(name, table_name="tasks")
