"""Analytics (tasks, failures, total duration and CPU time per day or hour over the last 30 days, per
cluster or per code package, as SVG charts), usage per month, and the runners (admin)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from ... import timeutil
from ...models import UsageDay
from ..deps import ServicesDep
from ..metrics import runner_state
from ..runners import alive_horizon
from .charts import Chart, bar_chart
from .web import (
    AdminViewerDep,
    HudRoute,
    HudState,
    ProjectDep,
    ViewerDep,
    render,
    show_duration,
    show_number,
)

router = APIRouter(prefix="/hud", route_class=HudRoute, include_in_schema=False)

BUCKETS = {"day": 86400, "hour": 3600}
USAGE_MONTHS = 12


@dataclass(kw_only=True)
class GroupSeries:
    name: str
    tasks: dict[int, float] = field(default_factory=dict)
    failed: dict[int, float] = field(default_factory=dict)
    duration: dict[int, float] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)

    @property
    def total_tasks(self) -> int:
        return int(sum(self.tasks.values()))

    @property
    def total_failed(self) -> int:
        return int(sum(self.failed.values()))

    @property
    def total_duration(self) -> float:
        return sum(self.duration.values())

    @property
    def total_cpu(self) -> float:
        return sum(self.cpu.values())


@dataclass(frozen=True, kw_only=True)
class GroupCharts:
    series: GroupSeries
    tasks: Chart
    duration: Chart
    cpu: Chart


def bucket_starts(now: float, days: int, bucket_s: int) -> list[int]:
    """The buckets of the last ``days`` days, the current one last."""
    last = int(now) // bucket_s * bucket_s
    count = days * 86400 // bucket_s
    return [last - (count - 1 - index) * bucket_s for index in range(count)]


def _charts(series: GroupSeries, buckets: list[int], bucket_s: int) -> GroupCharts:
    return GroupCharts(
        series=series,
        tasks=bar_chart(
            "Tasks (failed in red)",
            buckets,
            bucket_s,
            [("bar-tasks", "tasks", series.tasks), ("bar-failed", "failed", series.failed)],
            show_number,
        ),
        duration=bar_chart(
            "Total duration",
            buckets,
            bucket_s,
            [("bar-duration", "run time", series.duration)],
            show_duration,
        ),
        cpu=bar_chart(
            "CPU time",
            buckets,
            bucket_s,
            [("bar-cpu", "CPU time", series.cpu)],
            show_duration,
        ),
    )


@router.get("/projects/{project_id}/analytics")
def analytics(
    request: Request,
    svc: ServicesDep,
    who: ViewerDep,
    project: ProjectDep,
    by: Annotated[str, Query(pattern="^(day|hour)$")] = "day",
    group: Annotated[str, Query(pattern="^(cluster|code)$")] = "cluster",
    days: Annotated[int, Query(ge=1, le=90)] = 30,
) -> Response:
    bucket_s = BUCKETS[by]
    buckets = bucket_starts(timeutil.now(), days, bucket_s)
    everything = GroupSeries(name="all")
    groups: dict[str, GroupSeries] = {}
    state: HudState = request.app.state.hud
    points, computed_at = state.recent.get(
        ("series", project.id, buckets[0], bucket_s, group),
        lambda: svc.store.task_series(project.id, buckets[0], bucket_s, group),
    )
    for point in points:
        one = groups.setdefault(point.group, GroupSeries(name=point.group))
        for series in (one, everything):
            series.tasks[point.bucket] = series.tasks.get(point.bucket, 0) + point.tasks
            series.failed[point.bucket] = series.failed.get(point.bucket, 0) + point.failed
            series.duration[point.bucket] = series.duration.get(point.bucket, 0.0) + point.duration_s
            series.cpu[point.bucket] = series.cpu.get(point.bucket, 0.0) + point.cpu_s
    return render(
        request,
        "analytics.html",
        who=who,
        project=project,
        tab="analytics",
        by=by,
        group=group,
        days=days,
        overall=_charts(everything, buckets, bucket_s),
        groups=[_charts(groups[name], buckets, bucket_s) for name in sorted(groups)],
        computed_at=computed_at,
    )


@dataclass(kw_only=True)
class UsageRow:
    month: str
    cluster: str
    tasks_run: int = 0
    compute_s: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # by priority
    cpu_s: float = 0.0
    peak_memory_bytes: int | None = None  # the largest of one task

    @property
    def total_s(self) -> float:
        return sum(self.compute_s)

    def add(self, day: UsageDay) -> None:
        self.tasks_run += day.tasks_run
        self.compute_s[min(max(day.priority, 0), 2)] += day.compute_s
        self.cpu_s += day.cpu_s
        if day.peak_memory_bytes is not None:
            self.peak_memory_bytes = max(self.peak_memory_bytes or 0, day.peak_memory_bytes)


def month_start(moment: float, months_back: int) -> float:
    day = datetime.fromtimestamp(moment, tz=UTC)
    index = day.year * 12 + day.month - 1 - months_back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp()


@router.get("/projects/{project_id}/usage")
def usage(request: Request, svc: ServicesDep, who: ViewerDep, project: ProjectDep) -> Response:
    since = month_start(timeutil.now(), USAGE_MONTHS - 1)
    rows: dict[tuple[str, str], UsageRow] = {}
    totals: dict[str, UsageRow] = defaultdict(lambda: UsageRow(month="", cluster="all clusters"))
    state: HudState = request.app.state.hud
    days, computed_at = state.recent.get(
        ("usage", project.id, since), lambda: svc.store.usage_days(project.id, since)
    )
    for day in days:
        month = datetime.fromtimestamp(day.day, tz=UTC).strftime("%Y-%m")
        row = rows.setdefault((month, day.cluster), UsageRow(month=month, cluster=day.cluster))
        total = totals[month]
        total.month = month
        row.add(day)
        total.add(day)
    months = sorted(totals, reverse=True)
    return render(
        request,
        "usage.html",
        who=who,
        project=project,
        tab="usage",
        computed_at=computed_at,
        months=[
            (totals[m], sorted((r for (rm, _), r in rows.items() if rm == m), key=lambda r: r.cluster))
            for m in months
        ],
    )


@router.get("/runners")
def runners(request: Request, svc: ServicesDep, who: AdminViewerDep) -> Response:
    horizon = time.time() - alive_horizon(svc.settings.heartbeat_interval_s)
    listed = [(r, runner_state(r, horizon)) for r in svc.store.list_runners()]
    order = {"alive": 0, "lost": 1, "stopped": 2}
    listed.sort(key=lambda item: (order[item[1]], item[0].id))
    return render(request, "runners.html", who=who, tab="runners", runners=listed, now=time.time())
