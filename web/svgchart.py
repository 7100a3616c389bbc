"""Charts as SVG drawn on the server: geometry here, markup in templates.

No JavaScript and no chart library: a chart is a handful of rectangles,
grid lines and labels computed from the numbers, so it renders anywhere,
prints, and passes a strict Content-Security-Policy.  Every chart keeps its
numbers for the data table shown under it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

WIDTH = 900
HEIGHT = 280
MARGIN_LEFT = 64  # room for the y-axis labels
MARGIN_RIGHT = 52  # the y labels again: a chart scrolled to its recent end still has a scale
MARGIN_TOP = 16
MARGIN_BOTTOM = 44  # room for the x-axis labels


def plain_number(value: float) -> str:
    return f"{value:,.0f}"


@dataclass(frozen=True)
class Series:
    key: str  # CSS modifier: chart__bar--<key>
    label: str
    values: Sequence[float]


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str
    value: float
    title: str  # tooltip: "14:00: 3 received"


@dataclass(frozen=True)
class Tick:
    position: float
    label: str
    anchor: str = "middle"  # x labels at either end are anchored inwards, never cut by the edge


# Room a label of n characters takes at the charts' 13-unit font (a digit or letter is ~7.5 units).
CHAR_WIDTH = 7.5


def label_room(labels: Sequence[str]) -> int:
    return int(math.ceil(max((len(label) for label in labels), default=1) * CHAR_WIDTH))


@dataclass
class BarChart:
    id: str
    title: str
    description: str
    categories: list[str]  # full label of each bucket, for tooltips and the table
    series: list[Series]
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = MARGIN_LEFT
    right: int = WIDTH - MARGIN_RIGHT
    top: int = MARGIN_TOP
    bottom: int = HEIGHT - MARGIN_BOTTOM
    y_label: str = ""
    category_label: str = ""  # heading of the table's first column
    summary: str = ""  # one sentence with the figures that matter
    fmt: Callable[[float], str] = plain_number

    @property
    def table_rows(self) -> list[tuple[str, list[str]]]:
        return [(category, [self.fmt(s.values[i]) for s in self.series]) for i, category in enumerate(self.categories)]


def _nice(maximum: float, ticks: int) -> tuple[float, float]:
    raw = maximum / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = max(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), 1.0)
    return step * math.ceil(maximum / step), step


def nice_scale(maximum: float, ticks: int = 4, binary: bool = False) -> tuple[float, float]:
    """(top, step) with a step of 1, 2 or 5 × 10^k and top ≥ maximum; whole numbers.

    With `binary` (bytes), the step is 1, 2 or 5 × 10^k of a power of 1024,
    so the labels read 5 MB, 10 MB rather than 4.8 MB, 9.5 MB.
    """
    if maximum <= 0:
        return float(ticks), 1.0
    if binary:
        unit = 1024 ** min(int(math.log(maximum, 1024)), 4) if maximum >= 1024 else 1
        top, step = _nice(maximum / unit, ticks)
        return top * unit, step * unit
    if maximum <= ticks:
        return float(ticks), 1.0  # small counts: on a scale of 0…4 one message looks small
    return _nice(maximum, ticks)


def bar_chart(
    *,
    id: str,
    title: str,
    description: str,
    categories: list[str],
    axis_labels: list[str],
    series: list[Series],
    y_label: str = "",
    category_label: str = "",
    summary: str = "",
    fmt: Callable[[float], str] = plain_number,
    binary: bool = False,
) -> BarChart:
    """A grouped bar chart; `axis_labels` has one entry per category ("" for none)."""
    chart = BarChart(id=id, title=title, description=description, categories=categories, series=series)
    chart.y_label, chart.category_label, chart.summary, chart.fmt = y_label, category_label, summary, fmt
    top, step = nice_scale(max((v for s in series for v in s.values), default=0), binary=binary)
    plot_height = chart.bottom - chart.top
    plot_width = chart.right - chart.left

    def y_of(value: float) -> float:
        return chart.bottom - plot_height * value / top

    values = [i * step for i in range(int(round(top / step)) + 1)]
    # The y labels decide the margins: "20.0 KB" needs more room than "15".
    room = label_room([fmt(v) for v in values])
    chart.left = room + 12 + (28 if y_label else 0)  # the rotated axis title sits left of the labels
    chart.right = chart.width - room - 12
    plot_width = chart.right - chart.left
    chart.y_ticks = [Tick(round(y_of(v), 1), fmt(v)) for v in values]
    group = plot_width / max(len(categories), 1)
    bar_width = group * 0.8 / max(len(series), 1)
    for i, category in enumerate(categories):
        x0 = chart.left + group * i + group * 0.1
        for j, s in enumerate(series):
            value = s.values[i]
            y = y_of(value)
            chart.bars.append(
                Bar(
                    x=round(x0 + j * bar_width, 2),
                    y=round(y, 2),
                    width=round(max(bar_width - 1, 1), 2),
                    height=round(chart.bottom - y, 2),
                    series=s.key,
                    value=value,
                    title=f"{category}: {fmt(value)} {s.label.lower()}",
                )
            )
        if axis_labels[i]:
            chart.x_ticks.append(_x_tick(round(chart.left + group * (i + 0.5), 2), axis_labels[i], chart.width))
    return chart


def _x_tick(position: float, label: str, width: int) -> Tick:
    half = len(label) * CHAR_WIDTH / 2
    if position - half < 0:
        return Tick(position, label, "start")
    if position + half > width:
        return Tick(position, label, "end")
    return Tick(position, label)


@dataclass(frozen=True)
class Row:
    label: str
    value: float
    text: str  # the value as shown
    y: float  # top of the row: the label, then the bar under it
    width: float  # of the bar

    @property
    def bar_y(self) -> float:
        return self.y + 22

    @property
    def label_y(self) -> float:
        return self.y + 15

    @property
    def value_y(self) -> float:
        return self.y + 35


@dataclass
class HBarChart:
    """Horizontal bars, each under its label with its value beside it (reasons, backlog).

    Narrow (320 units) so that its text reads at about its own size in a
    half-width card and on a phone.
    """

    id: str
    title: str
    description: str
    rows: list[Row]
    width: int = 320
    height: int = 0
    row_height: int = 48
    bar_height: int = 18
    nothing: str = ""  # said instead of bars when every value is zero

    @property
    def all_zero(self) -> bool:
        return bool(self.rows) and not any(row.value for row in self.rows)


def hbar_chart(
    *,
    id: str,
    title: str,
    description: str,
    items: list[tuple[str, float]],
    fmt: Callable[[float], str] = plain_number,
    nothing: str = "",
) -> HBarChart:
    chart = HBarChart(id=id, title=title, description=description, rows=[], nothing=nothing)
    longest = max((value for _, value in items), default=0) or 1
    room = chart.width - 70  # keep space for the number after the bar
    for i, (label, value) in enumerate(items):
        chart.rows.append(
            Row(
                label=label,
                value=value,
                text=fmt(value),
                y=i * chart.row_height,
                width=round(room * value / longest, 2) if value else 0,
            )
        )
    chart.height = max(len(items), 1) * chart.row_height
    return chart
