"""The runner registry: who runs where, for which clusters, and how recently it was heard of."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from .. import timeutil
from ..models import RunnerInfo
from .schema import runners
from .transactions import Transactional


def _runner_from_row(row: sa.Row[tuple[object, ...]]) -> RunnerInfo:
    values = row._mapping
    return RunnerInfo(
        id=str(values["id"]),
        host=str(values["host"]),
        clusters=tuple(values["clusters"]),
        slots=int(values["slots"]),
        running=int(values["running"]),
        version=str(values["version"]),
        started_at=float(values["started_at"]),
        last_heartbeat=float(values["last_heartbeat"]),
        stopped_at=None if values["stopped_at"] is None else float(values["stopped_at"]),
    )


class RunnerQueries(Transactional):
    def register_runner(
        self, runner_id: str, host: str, clusters: Sequence[str], slots: int, version: str
    ) -> None:
        now = timeutil.now()
        values = dict(
            host=host,
            clusters=list(clusters),
            slots=slots,
            running=0,
            version=version,
            started_at=now,
            last_heartbeat=now,
            stopped_at=None,
        )
        with self._write() as conn:
            updated = conn.execute(
                runners.update().where(runners.c.id == runner_id).values(**values)
            ).rowcount
            if not updated:
                conn.execute(runners.insert().values(id=runner_id, **values))

    def runner_heartbeat(self, runner_id: str, running: int) -> None:
        with self._write() as conn:
            conn.execute(
                runners.update()
                .where(runners.c.id == runner_id)
                .values(running=running, last_heartbeat=timeutil.now(), stopped_at=None)
            )

    def unregister_runner(self, runner_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                runners.update().where(runners.c.id == runner_id).values(running=0, stopped_at=timeutil.now())
            )

    def list_runners(self) -> list[RunnerInfo]:
        with self._read() as conn:
            rows = conn.execute(runners.select().order_by(runners.c.id)).all()
        return [_runner_from_row(r) for r in rows]

    def live_clusters(self, max_age: float) -> set[str]:
        """Clusters served by a runner that is up and was heard of within ``max_age`` seconds."""
        horizon = timeutil.now() - max_age
        with self._read() as conn:
            rows = conn.execute(
                sa.select(runners.c.clusters).where(
                    runners.c.stopped_at.is_(None), runners.c.last_heartbeat >= horizon
                )
            ).all()
        return {cluster for row in rows for cluster in row[0]}
