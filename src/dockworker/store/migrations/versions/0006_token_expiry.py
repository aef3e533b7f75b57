"""tokens.expires_at (a token may expire) and tokens.last_used_at (when it last
authenticated, updated at most once a minute); an index to list a project's tokens

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", sa.Float(), nullable=True))
        batch_op.create_index("ix_tokens_project", ["project_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch_op:
        batch_op.drop_index("ix_tokens_project")
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("expires_at")
