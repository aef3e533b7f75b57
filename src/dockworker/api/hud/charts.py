"""Bar charts drawn on the server as SVG (no script, no library): the geometry is computed here,
``templates/_chart.html`` draws it with presentation attributes and CSS classes only, which the
Content-Security-Policy allows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

WIDTH = 720
HEIGHT = 140
LEFT = 56  # room for the y axis' labels
BOTTOM = 18  # room for the x axis' labels
TOP = 8
# Up to this many buckets each bar is its own element with a tooltip; beyond (720 hours), each
# series is one path, which keeps the page small and quick to draw.
MAX_TOOLTIP_BARS = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str  # the CSS class: its colour
    title: str  # the tooltip


@dataclass(frozen=True, slots=True, kw_only=True)
class Outline:
    kind: str
    d: str  # SVG path data: one rectangle per bar


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    x: float
    y: float
    text: str
    anchor: str = "start"


@dataclass(frozen=True, slots=True, kw_only=True)
class Chart:
    title: str
    width: int
    height: int
    bars: tuple[Bar, ...]
    outlines: tuple[Outline, ...]
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    baseline: float
    left: float
    total: str


def bucket_label(start: int, size: int) -> str:
    moment = datetime.fromtimestamp(start, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:00" if size < 86400 else "%Y-%m-%d")


def bar_chart(
    title: str,
    buckets: Sequence[int],
    bucket_s: int,
    series: Sequence[tuple[str, str, Mapping[int, float]]],
    show: Callable[[float], str],
) -> Chart:
    """Bars per bucket; each of ``series`` (CSS class, name, values per bucket start) is drawn
    over the one before, from the baseline, so a subset (failures of tasks) shows inside it."""
    plot_width = WIDTH - LEFT
    plot_height = HEIGHT - TOP - BOTTOM
    baseline = TOP + plot_height
    top_value = max((v for _, _, values in series for v in values.values()), default=0.0)
    scale = plot_height / top_value if top_value > 0 else 0.0
    step = plot_width / max(1, len(buckets))
    gap = min(1.0, step / 4)
    bars: list[Bar] = []
    for index, start in enumerate(buckets):
        for kind, name, values in series:
            value = values.get(start, 0.0)
            if value <= 0:
                continue
            height = max(1.0, value * scale)
            bars.append(
                Bar(
                    x=round(LEFT + index * step + gap / 2, 2),
                    y=round(baseline - height, 2),
                    width=round(max(0.5, step - gap), 2),
                    height=round(height, 2),
                    kind=kind,
                    title=f"{bucket_label(start, bucket_s)}: {show(value)} {name}",
                )
            )
    y_ticks = (
        Tick(x=LEFT - 4, y=baseline, text="0", anchor="end"),
        Tick(x=LEFT - 4, y=TOP + 8, text=show(top_value), anchor="end"),
    )
    # The first date at the left edge, the middle one centred, the last at the right edge.
    places = {0: (LEFT, "start"), len(buckets) // 2: (LEFT + plot_width / 2, "middle")}
    places[len(buckets) - 1] = (WIDTH, "end")
    x_ticks = tuple(
        Tick(x=round(x, 2), y=HEIGHT - 4, text=bucket_label(buckets[index], bucket_s)[:10], anchor=anchor)
        for index, (x, anchor) in sorted(places.items())
        if buckets
    )
    outlines: tuple[Outline, ...] = ()
    if len(buckets) > MAX_TOOLTIP_BARS:
        outlines = tuple(
            Outline(
                kind=kind,
                d=" ".join(f"M{b.x} {b.y}h{b.width}v{b.height}h-{b.width}z" for b in bars if b.kind == kind),
            )
            for kind, _, _ in series
        )
        bars = []
    first_series = series[0][2] if series else {}
    return Chart(
        title=title,
        width=WIDTH,
        height=HEIGHT,
        bars=tuple(bars),
        outlines=outlines,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        baseline=baseline,
        left=LEFT,
        total=show(sum(first_series.values())),
    )
