"""tasks.cpu_time_ms and tasks.peak_memory_bytes: what a task's container used, as its runner
read it from the engine's cgroup accounting when the container ended (null when unknown)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.add_column(sa.Column("cpu_time_ms", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.drop_column("peak_memory_bytes")
        batch_op.drop_column("cpu_time_ms")
