"""Table definitions. Migrations under ``migrations/`` must produce exactly this schema
(checked by tests/integration/test_migrations.py)."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from ..states import ACTIVE, TaskStatus, in_order

# Task priorities, highest first (the claim looks at each one).
PRIORITIES = (2, 1, 0)


def status_sql(states: Iterable[TaskStatus], column: str = "status") -> str:
    """``status = 'queued'`` or ``status IN ('preparing', 'running')``, for SQL text. States are
    written as literals, never bound: SQLite matches a query's condition to a partial index's
    only when both are the same literal text."""
    values = [f"'{status.value}'" for status in in_order(states)]
    if len(values) == 1:
        return f"{column} = {values[0]}"
    return f"{column} IN ({', '.join(values)})"


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = sa.String(24)
Time = sa.Float()

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", Time, nullable=False),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("project_id", Id, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=True),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("revoked_at", Time, nullable=True),
    sa.Column("expires_at", Time, nullable=True),
    sa.Column("last_used_at", Time, nullable=True),
    sa.Index("ix_tokens_project", "project_id"),
)

codes = sa.Table(
    "codes",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("project_id", Id, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("rev", sa.Integer, nullable=False),
    sa.Column("latest_revision_id", Id, nullable=False),
    sa.Column("max_concurrency", sa.Integer, nullable=True),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
    sa.UniqueConstraint("project_id", "name", name="uq_codes_project_name"),
)

code_revisions = sa.Table(
    "code_revisions",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("code_id", Id, sa.ForeignKey("codes.id", ondelete="CASCADE"), nullable=False),
    sa.Column("project_id", Id, nullable=False),
    sa.Column("rev", sa.Integer, nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("checksum", sa.String(64), nullable=True),
    sa.Column("code_size", sa.Integer, nullable=True),
    sa.Column("archive", sa.LargeBinary, nullable=True),
    sa.Column("created_at", Time, nullable=False),
    sa.UniqueConstraint("code_id", "rev", name="uq_code_revisions_code_rev"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("project_id", Id, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    sa.Column("code_id", Id, nullable=False),
    sa.Column("code_name", sa.String(255), nullable=False),
    sa.Column("code_rev", sa.Integer, nullable=False),
    sa.Column("revision_id", Id, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("msg", sa.Text, nullable=True),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("timeout", sa.Integer, nullable=False),
    sa.Column("delay", sa.Integer, nullable=False),
    sa.Column("label", sa.String(255), nullable=True),
    sa.Column("cluster", sa.String(100), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
    sa.Column("run_at", Time, nullable=False),
    sa.Column("start_time", Time, nullable=True),
    sa.Column("end_time", Time, nullable=True),
    sa.Column("percent", sa.Integer, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("original_task_id", Id, nullable=True),
    sa.Column("retry_task_id", Id, nullable=True),
    sa.Column("runner_id", sa.String(200), nullable=True),
    sa.Column("lease_expires_at", Time, nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("infra_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("log_size", sa.Integer, nullable=False, server_default="0"),
    sa.Column("output_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("schedule_id", Id, nullable=True),
    sa.Column("retries", sa.Integer, nullable=True),
    sa.Column("retries_delay", sa.Integer, nullable=True),
    sa.CheckConstraint(
        "status IN ('queued','preparing','running','complete','error','cancelled','killed','timeout')",
        name="status_known",
    ),
    sa.CheckConstraint(f"priority BETWEEN {min(PRIORITIES)} AND {max(PRIORITIES)}", name="priority_range"),
    # Counts by package and status (the HUD, /metrics). The claims never read it (see below).
    sa.Index("ix_tasks_code_status", "code_id", "status"),
)

# The claim's index, over queued tasks only: one "lane" per package, cluster and priority, each
# in the claim's order (oldest first). The claim finds the packages with queued work by skipping
# through it (one probe per package), then reads the head of each open lane: its cost depends on
# the number of packages, not on the length of any queue, paused and saturated ones included.
QUEUED_ONLY = sa.text(status_sql([TaskStatus.QUEUED]))
sa.Index(
    "ix_tasks_queue_lane",
    tasks.c.code_id,
    tasks.c.cluster,
    tasks.c.priority,
    tasks.c.run_at,
    tasks.c.id,
    postgresql_where=QUEUED_ONLY,
    sqlite_where=QUEUED_ONLY,
)
# Leased tasks (a handful), which queued and finished tasks never enter (an enqueue, a claim or
# a cancel_all does not write them): a package's count under max_concurrency, lease expiry.
ACTIVE_ONLY = sa.text(status_sql(ACTIVE))
sa.Index("ix_tasks_active", tasks.c.code_id, postgresql_where=ACTIVE_ONLY, sqlite_where=ACTIVE_ONLY)
# A runner's leased tasks (its heartbeat, cancels, restarts).
sa.Index("ix_tasks_leased", tasks.c.runner_id, postgresql_where=ACTIVE_ONLY, sqlite_where=ACTIVE_ONLY)
# The claim statements read ix_tasks_queue_lane whatever the statistics say (SQLite: INDEXED
# BY; PostgreSQL: no sort but the heads'): with statistics missing or stale (autovacuum off, no
# ANALYZE yet), ix_tasks_code_status looks as good for a lane, and reading a package's whole
# queue through it to sort it costs as much as the queue is long.
# Listings, newest first: a page's ids come from this index alone (an index-only walk).
sa.Index("ix_tasks_project_listing", tasks.c.project_id, tasks.c.created_at, tasks.c.id)

task_log_chunks = sa.Table(
    "task_log_chunks",
    metadata,
    sa.Column("task_id", Id, sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("start", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

task_events = sa.Table(
    "task_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", Id, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("at", Time, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
    sa.Column("container_id", sa.String(64), nullable=True),
    sa.Index("ix_task_events_task", "task_id", "id"),
)

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("project_id", Id, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    sa.Column("code_name", sa.String(255), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("start_at", Time, nullable=False),
    sa.Column("run_every", sa.Integer, nullable=True),
    sa.Column("cron", sa.String(200), nullable=True),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("run_times", sa.Integer, nullable=True),
    sa.Column("end_at", Time, nullable=True),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("timeout", sa.Integer, nullable=True),
    sa.Column("delay", sa.Integer, nullable=False),
    sa.Column("label", sa.String(255), nullable=True),
    sa.Column("cluster", sa.String(100), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("msg", sa.Text, nullable=True),
    sa.Column("run_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_run_time", Time, nullable=True),
    sa.Column("next_start", Time, nullable=True),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
    sa.CheckConstraint("status IN ('scheduled','complete','cancelled')", name="status_known"),
    sa.Index("ix_schedules_due", "status", "next_start"),
    sa.Index("ix_schedules_project", "project_id", "created_at"),
)

schedule_fires = sa.Table(
    "schedule_fires",
    metadata,
    sa.Column("schedule_id", Id, sa.ForeignKey("schedules.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("slot", Time, primary_key=True),
    sa.Column("task_id", Id, nullable=False),
    sa.Column("fired_at", Time, nullable=False),
)

runners = sa.Table(
    "runners",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("clusters", sa.JSON, nullable=False),
    sa.Column("slots", sa.Integer, nullable=False),
    sa.Column("running", sa.Integer, nullable=False),
    sa.Column("version", sa.String(40), nullable=False),
    sa.Column("started_at", Time, nullable=False),
    sa.Column("last_heartbeat", Time, nullable=False),
    sa.Column("stopped_at", Time, nullable=True),
)

# Clusters with their own runners (``dockworker runner --api``): a cluster's tasks carry its id
# in ``tasks.cluster``. Its token is kept as a digest (NULL once revoked).
clusters = sa.Table(
    "clusters",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("project_id", Id, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("memory_mb", sa.Integer, nullable=False),
    sa.Column("public_key", sa.Text, nullable=True),
    sa.Column("token_digest", sa.String(64), nullable=True, unique=True),
    sa.Column("token_created_at", Time, nullable=True),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
    sa.UniqueConstraint("project_id", "name", name="uq_clusters_project_name"),
)

cluster_shares = sa.Table(
    "cluster_shares",
    metadata,
    sa.Column("cluster_id", Id, sa.ForeignKey("clusters.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("project_id", Id, sa.ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("created_at", Time, nullable=False),
    sa.Index("ix_cluster_shares_project", "project_id"),
)

# The live process of each remote runner id: one at a time. A session ends when its runner
# stops, or expires when it is not renewed (its runner was killed or cut off); the same runner
# restarted on its host resumes it with the secret it kept (never held twice: its data
# directory is locked).
runner_sessions = sa.Table(
    "runner_sessions",
    metadata,
    sa.Column("runner_id", sa.String(200), primary_key=True),
    sa.Column("cluster_id", Id, nullable=False),
    sa.Column("secret_digest", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("opened_at", Time, nullable=False),
    sa.Column("expires_at", Time, nullable=False),
)
