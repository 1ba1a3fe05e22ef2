"""Chart geometry for the Usage page, as pure functions: data in, shapes out.

Templates draw the shapes as SVG (``templates/_charts.html``); doing the arithmetic here keeps
it testable and keeps numbers and text out of markup built by hand (Jinja escapes the labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

WIDTH = 1200
HEIGHT = 200
LEFT = 56  # room for the axis labels
BOTTOM = 22
TOP = 8
GAUGE_WIDTH = 560


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: float
    title: str


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class BarChart:
    title: str
    unit: str
    bars: list[Bar]
    ticks: list[Tick]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    baseline: int = HEIGHT - BOTTOM
    total: float = 0.0


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above ``value`` (1 for nothing), for axis tops."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        top = step * 10.0**exponent
        if top >= value * (1 - 1e-12):
            return top
    return 10.0 ** (exponent + 1)


def format_quantity(value: float) -> str:
    """Short, readable: 0, 0.25, 12.5, 1,234, 1.2M."""
    if value == 0:
        return "0"
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.3f}".rstrip("0").rstrip(".")


def bar_chart(title: str, unit: str, points: list[tuple[str, float]]) -> BarChart:
    """One bar per ``(label, value)``, scaled to a rounded axis top with four ticks."""
    top = nice_ceiling(max((value for _, value in points), default=0.0))
    plot_height = HEIGHT - BOTTOM - TOP
    plot_width = WIDTH - LEFT - 4
    slot = plot_width / max(len(points), 1)
    bars = []
    for index, (label, value) in enumerate(points):
        height = plot_height * (value / top) if value > 0 else 0.0
        bars.append(Bar(
            x=round(LEFT + index * slot + slot * 0.15, 2), y=round(HEIGHT - BOTTOM - height, 2),
            width=round(slot * 0.7, 2), height=round(height, 2), label=label, value=value,
            title=f"{label}: {format_quantity(value)} {unit}",
        ))
    ticks = [Tick(y=round(HEIGHT - BOTTOM - plot_height * step / 4, 2), label=format_quantity(top * step / 4))
             for step in range(5)]
    return BarChart(title=title, unit=unit, bars=bars, ticks=ticks, total=sum(value for _, value in points))


@dataclass(frozen=True)
class Marker:
    x: float
    label: str


@dataclass(frozen=True)
class CapGauge:
    """The month's estimate as a bar, with the soft and hard caps as marks on the same scale."""

    estimate_width: float
    markers: list[Marker]
    over_soft: bool
    over_hard: bool
    width: int = GAUGE_WIDTH


def cap_gauge(estimate: Decimal, soft: Decimal | None, hard: Decimal | None) -> CapGauge:
    scale = max([estimate, *(cap for cap in (soft, hard) if cap is not None), Decimal("0.01")])
    span = GAUGE_WIDTH - 8

    def at(amount: Decimal) -> float:
        return round(4 + span * float(amount / scale), 2)

    markers = []
    if soft is not None:
        markers.append(Marker(at(soft), f"soft cap ${soft:.2f}"))
    if hard is not None:
        markers.append(Marker(at(hard), f"hard cap ${hard:.2f}"))
    return CapGauge(
        estimate_width=round(at(estimate) - 4, 2), markers=markers,
        over_soft=soft is not None and estimate >= soft, over_hard=hard is not None and estimate >= hard,
    )
