"""The Usage page's chart geometry (pure functions; the browser test checks the drawn SVG)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from coordinator.console.charts import HEIGHT, bar_chart, cap_gauge, format_quantity, nice_ceiling


@pytest.mark.parametrize(("value", "top"), [(0, 1), (-3, 1), (0.3, 0.5), (7, 10), (7200, 10000), (2000, 2000),
                                            (2001, 2500), (26, 50), (1, 1)])
def test_nice_ceiling(value: float, top: float) -> None:
    assert nice_ceiling(value) == pytest.approx(top)


@pytest.mark.parametrize(("value", "text"), [(0, "0"), (0.25, "0.25"), (0.0004, "0"), (12.5, "12.5"), (10, "10"),
                                             (1234.4, "1,234"), (2_500_000, "2.5M")])
def test_format_quantity(value: float, text: str) -> None:
    assert format_quantity(value) == text


def test_bars_scale_to_the_axis_top_and_sit_on_the_baseline() -> None:
    chart = bar_chart("CPU", "CPU-seconds", [("01", 7200.0), ("02", 0.0), ("03", 1800.0)])
    tallest, empty, quarter = chart.bars
    baseline = HEIGHT - 22
    assert empty.height == 0 and empty.y == baseline
    assert tallest.y + tallest.height == pytest.approx(baseline)
    assert tallest.height / quarter.height == pytest.approx(4)
    assert tallest.height / (baseline - 8) == pytest.approx(0.72)  # 7200 of an axis up to 10,000
    assert [tick.label for tick in chart.ticks] == ["0", "2,500", "5,000", "7,500", "10,000"]
    assert chart.total == 9000 and tallest.title == "01: 7,200 CPU-seconds"
    assert tallest.x < empty.x < quarter.x


def test_the_gauge_places_the_estimate_against_the_caps() -> None:
    gauge = cap_gauge(Decimal("40"), Decimal("50"), Decimal("100"))
    assert not gauge.over_soft and not gauge.over_hard
    soft, hard = gauge.markers
    assert (soft.label, hard.label) == ("soft cap $50.00", "hard cap $100.00")
    assert hard.x == pytest.approx(4 + (gauge.width - 8))
    assert gauge.estimate_width == pytest.approx((gauge.width - 8) * 0.4)
    over = cap_gauge(Decimal("120"), Decimal("50"), Decimal("100"))
    assert over.over_soft and over.over_hard and over.estimate_width == pytest.approx(over.width - 8)
    assert cap_gauge(Decimal("0"), None, None).markers == []
