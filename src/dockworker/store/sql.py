"""``SqlStore``: the store in SQLAlchemy Core, one query module per concern. Dialect modules
supply the engine and the claim statement (and override what they can write better)."""

from __future__ import annotations

import abc
from pathlib import Path

import sqlalchemy as sa

from .. import ids
from .analytics_sql import AnalyticsQueries
from .clusters_sql import ClusterQueries
from .codes_sql import CodeQueries
from .leases_sql import LeaseQueries
from .logs_sql import LogQueries
from .remote_sql import RemoteRunnerQueries
from .runners_sql import RunnerQueries
from .schedules_sql import ScheduleQueries
from .schema import meta
from .tasks_sql import TaskQueries
from .tenancy_sql import TenancyQueries
from .wakeup import InProcessWakeUps


class SqlStore(
    TenancyQueries,
    CodeQueries,
    TaskQueries,
    LeaseQueries,
    LogQueries,
    ScheduleQueries,
    RunnerQueries,
    ClusterQueries,
    RemoteRunnerQueries,
    AnalyticsQueries,
    InProcessWakeUps,
    abc.ABC,
):
    """Dialects call ``super().__init__()``."""

    def migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        config.attributes["connection_url"] = self.engine.url.render_as_string(hide_password=False)
        with self._write() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        self._flush_last_used()
        self.engine.dispose()

    def installation_id(self) -> str:
        """A random id made once per database. Containers carry it, so that installations
        sharing a Docker engine never touch each other's containers."""
        with self._write() as conn:
            found = conn.execute(sa.select(meta.c.value).where(meta.c.key == "installation_id")).scalar()
            if found is None:
                found = ids.new_id()
                conn.execute(meta.insert().values(key="installation_id", value=found))
            return str(found)
