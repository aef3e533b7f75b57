"""Clusters with their own tokens (and the projects they are shared with), and the sessions
of remote runners

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clusters",
        sa.Column("id", sa.String(24), nullable=False),
        sa.Column("project_id", sa.String(24), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.Column("token_digest", sa.String(64), nullable=True),
        sa.Column("token_created_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_clusters_project_id_projects", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_clusters"),
        sa.UniqueConstraint("project_id", "name", name="uq_clusters_project_name"),
        sa.UniqueConstraint("token_digest", name="uq_clusters_token_digest"),
    )
    op.create_table(
        "cluster_shares",
        sa.Column("cluster_id", sa.String(24), nullable=False),
        sa.Column("project_id", sa.String(24), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cluster_id"], ["clusters.id"], name="fk_cluster_shares_cluster_id_clusters", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_cluster_shares_project_id_projects", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("cluster_id", "project_id", name="pk_cluster_shares"),
    )
    op.create_index("ix_cluster_shares_project", "cluster_shares", ["project_id"])
    op.create_table(
        "runner_sessions",
        sa.Column("runner_id", sa.String(200), nullable=False),
        sa.Column("cluster_id", sa.String(24), nullable=False),
        sa.Column("secret_digest", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("runner_id", name="pk_runner_sessions"),
    )


def downgrade() -> None:
    op.drop_table("runner_sessions")
    op.drop_index("ix_cluster_shares_project", table_name="cluster_shares")
    op.drop_table("cluster_shares")
    op.drop_table("clusters")
