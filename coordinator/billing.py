"""Billing decisions, pure: prices, money, hour and month boundaries, caps, invoice lines.

Units. Usage is kept as integer micro-units (1e-6 CPU-second, GPU-second, GB-second): sums
are exact, and the ledger's sum over any set of hours equals the sum of the jobs' own figures
to the micro-unit. Money is ``Decimal`` throughout, never ``float``; it is rounded once, at the
very end, half-up to cents (``round_usd``). Times are integer milliseconds since the epoch, UTC.

Nothing here reads a clock or the store: callers pass ``now`` and the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from common.config import ConfigError

MICROS = 1_000_000
HOUR_MS = 3_600_000
CENT = Decimal("0.01")
INVOICING_PLANS = frozenset({"payg", "team"})
MAX_CAP_USD = Decimal("1000000000000")

# Defaults sized so the reference example (18 432 CPU-seconds) costs about $0.26.
DEFAULT_CPU_SECOND_USD = Decimal("0.000014")
DEFAULT_GPU_SECOND_USD = Decimal("0.0006")
DEFAULT_GB_SECOND_USD = Decimal("0.0000015")
DEFAULT_METER_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True)
class Prices:
    """USD per CPU-second, per GPU-second (optionally per ``gpuModel`` label), per GB-second."""

    cpu_second: Decimal = DEFAULT_CPU_SECOND_USD
    gpu_second: Decimal = DEFAULT_GPU_SECOND_USD
    gb_second: Decimal = DEFAULT_GB_SECOND_USD
    gpu_second_by_model: Mapping[str, Decimal] = field(default_factory=dict)

    def gpu_price(self, model: str) -> Decimal:
        return self.gpu_second_by_model.get(model, self.gpu_second)


@dataclass(frozen=True)
class BillingConfig:
    prices: Prices = field(default_factory=Prices)
    meter_interval_seconds: float = DEFAULT_METER_INTERVAL_SECONDS


def _money(value: Any, where: str) -> Decimal:
    """A price from TOML: a string (exact) or a number (read through its shortest repr)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where} must be a number or a decimal string")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ConfigError(f"{where} is not a decimal number: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{where} must be zero or more")
    return amount


BILLING_KEYS = {"cpu_second_usd", "gpu_second_usd", "gb_second_usd", "gpu_second_usd_by_model",
                 "meter_interval_seconds"}


def config_from_toml(table: Mapping[str, Any], source: str = "config") -> BillingConfig:
    """Read the ``[billing]`` table; raises ``ConfigError`` naming the bad or unknown key."""
    unknown = set(table) - BILLING_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) billing.{', billing.'.join(sorted(unknown))}")
    defaults = Prices()
    by_model_raw = table.get("gpu_second_usd_by_model", {})
    if not isinstance(by_model_raw, dict):
        raise ConfigError(f"{source}: billing.gpu_second_usd_by_model must be a table of model = price")
    by_model = {str(model): _money(price, f"{source}: billing.gpu_second_usd_by_model.{model}")
                for model, price in by_model_raw.items()}
    prices = Prices(
        cpu_second=_money(table["cpu_second_usd"], f"{source}: billing.cpu_second_usd")
        if "cpu_second_usd" in table else defaults.cpu_second,
        gpu_second=_money(table["gpu_second_usd"], f"{source}: billing.gpu_second_usd")
        if "gpu_second_usd" in table else defaults.gpu_second,
        gb_second=_money(table["gb_second_usd"], f"{source}: billing.gb_second_usd")
        if "gb_second_usd" in table else defaults.gb_second,
        gpu_second_by_model=by_model,
    )
    interval = table.get("meter_interval_seconds", DEFAULT_METER_INTERVAL_SECONDS)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval <= 3600:
        raise ConfigError(f"{source}: billing.meter_interval_seconds must be a number in (0, 3600]")
    return BillingConfig(prices=prices, meter_interval_seconds=float(interval))


# --- quantities -----------------------------------------------------------------------------

def to_micros(seconds: float | None) -> int:
    """A usage figure (float seconds from the agent) as integer micro-units, half-up."""
    if seconds is None:
        return 0
    return int((Decimal(repr(float(seconds))) * MICROS).to_integral_value(ROUND_HALF_UP))


def micros_to_seconds(micros: int) -> Decimal:
    return Decimal(micros) / MICROS


@dataclass
class UsageTotals:
    """Usage summed over some hours: CPU and memory, and GPU split by GPU model ('' = unknown);
    GPU-memory GB-seconds and GPU utilisation-seconds are reported beside them, not priced."""

    cpu_micros: int = 0
    gb_micros: int = 0
    gpu_micros_by_model: dict[str, int] = field(default_factory=dict)
    gpu_memory_micros: int = 0
    gpu_util_micros: int = 0

    def add(self, gpu_model: str, cpu_micros: int, gpu_micros: int, gb_micros: int, *,
            gpu_memory_micros: int = 0, gpu_util_micros: int = 0) -> None:
        self.cpu_micros += cpu_micros
        self.gb_micros += gb_micros
        self.gpu_memory_micros += gpu_memory_micros
        self.gpu_util_micros += gpu_util_micros
        if gpu_micros:
            self.gpu_micros_by_model[gpu_model] = self.gpu_micros_by_model.get(gpu_model, 0) + gpu_micros

    @property
    def gpu_micros(self) -> int:
        return sum(self.gpu_micros_by_model.values())


def cost(usage: UsageTotals, prices: Prices) -> Decimal:
    """The exact, unrounded USD cost of ``usage``."""
    total = micros_to_seconds(usage.cpu_micros) * prices.cpu_second
    total += micros_to_seconds(usage.gb_micros) * prices.gb_second
    for model, micros in usage.gpu_micros_by_model.items():
        total += micros_to_seconds(micros) * prices.gpu_price(model)
    return total


def round_usd(amount: Decimal) -> Decimal:
    """Half-up to cents: the one rounding step, applied to a final figure."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class InvoiceLine:
    resource: str  # "cpu", "memory" or "gpu"
    unit: str
    quantity: Decimal
    unit_price_usd: Decimal
    amount_usd: Decimal  # exact: lines add up to the subtotal to the last digit
    gpu_model: str | None = None


def invoice_lines(usage: UsageTotals, prices: Prices) -> list[InvoiceLine]:
    """One line per resource (GPU: one per model used); CPU and memory lines always appear."""
    cpu = micros_to_seconds(usage.cpu_micros)
    gb = micros_to_seconds(usage.gb_micros)
    lines = [
        InvoiceLine("cpu", "cpu-second", cpu, prices.cpu_second, cpu * prices.cpu_second),
        InvoiceLine("memory", "gb-second", gb, prices.gb_second, gb * prices.gb_second),
    ]
    for model in sorted(usage.gpu_micros_by_model):
        quantity = micros_to_seconds(usage.gpu_micros_by_model[model])
        price = prices.gpu_price(model)
        lines.append(InvoiceLine("gpu", "gpu-second", quantity, price, quantity * price, model or None))
    return lines


# --- price versions -------------------------------------------------------------------------

@dataclass(frozen=True)
class PriceVersion:
    """Prices in effect for usage recorded from ``effective_at`` (ms) until the next version's."""

    effective_at: int
    prices: Prices


def prices_to_json(prices: Prices) -> dict[str, Any]:
    """Prices as decimal strings (exact), for the store."""
    return {"cpuSecondUsd": str(prices.cpu_second), "gpuSecondUsd": str(prices.gpu_second),
            "gbSecondUsd": str(prices.gb_second),
            "gpuSecondUsdByModel": {model: str(price) for model, price in sorted(prices.gpu_second_by_model.items())}}


def prices_from_json(data: Mapping[str, Any]) -> Prices:
    return Prices(cpu_second=Decimal(data["cpuSecondUsd"]), gpu_second=Decimal(data["gpuSecondUsd"]),
                  gb_second=Decimal(data["gbSecondUsd"]),
                  gpu_second_by_model={model: Decimal(price) for model, price in data["gpuSecondUsdByModel"].items()})


def new_price_version(versions: Sequence[PriceVersion], configured: Prices, now: int) -> PriceVersion | None:
    """The version to record when the coordinator runs with ``configured`` prices at ``now``,
    or None if they are already the latest. The first version covers all time; a change takes
    effect at the next whole hour (usage is accounted per hour), so usage already recorded
    keeps the price it was recorded under."""
    if not versions:
        return PriceVersion(0, configured)
    latest = max(versions, key=lambda version: version.effective_at)
    if prices_to_json(latest.prices) == prices_to_json(configured):
        return None
    return PriceVersion(max(hour_ceil(now), latest.effective_at), configured)


def priced_spans(versions: Sequence[PriceVersion], start: int, end: int,
                 fallback: Prices | None = None) -> list[tuple[int, int, Prices]]:
    """``[start, end)`` cut where a price version takes effect, each span with its prices
    (``fallback`` before the first version, or where there is none)."""
    ordered = sorted(versions, key=lambda version: version.effective_at)
    if not ordered or ordered[0].effective_at > start:
        ordered.insert(0, PriceVersion(start, fallback or (ordered[0].prices if ordered else Prices())))
    spans = []
    for index, version in enumerate(ordered):
        span_end = ordered[index + 1].effective_at if index + 1 < len(ordered) else end
        lo, hi = max(start, version.effective_at), min(end, span_end)
        if lo < hi:
            spans.append((lo, hi, version.prices))
    return spans


def merge_invoice_lines(parts: Sequence[list[InvoiceLine]]) -> list[InvoiceLine]:
    """Lines of several price spans as one list: lines of one resource (and GPU model) at the
    same unit price are added up; a resource whose price changed has a line per price."""
    merged: dict[tuple[str, str | None, Decimal], InvoiceLine] = {}
    for lines in parts:
        for line in lines:
            key = (line.resource, line.gpu_model, line.unit_price_usd)
            if key in merged:
                earlier = merged[key]
                line = InvoiceLine(line.resource, line.unit, earlier.quantity + line.quantity, line.unit_price_usd,
                                   earlier.amount_usd + line.amount_usd, line.gpu_model)
            merged[key] = line
    kept = [line for line in merged.values()
            if line.quantity or sum(1 for other in merged.values()
                                    if (other.resource, other.gpu_model) == (line.resource, line.gpu_model)) == 1]
    order = {"cpu": 0, "memory": 1, "gpu": 2}
    return sorted(kept, key=lambda line: (order.get(line.resource, 3), line.gpu_model or ""))


# --- time -----------------------------------------------------------------------------------

def hour_floor(millis: int) -> int:
    return millis - millis % HOUR_MS


def hour_ceil(millis: int) -> int:
    return -(-millis // HOUR_MS) * HOUR_MS


def _utc(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)


def _millis(moment: datetime) -> int:
    return int(moment.timestamp()) * 1000


def month_start(millis: int) -> int:
    """Start of the UTC calendar month containing ``millis``."""
    moment = _utc(millis)
    return _millis(datetime(moment.year, moment.month, 1, tzinfo=UTC))


def next_month(millis: int) -> int:
    """Start of the UTC calendar month after the one containing ``millis``."""
    moment = _utc(millis)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return _millis(datetime(year, month, 1, tzinfo=UTC))


@dataclass(frozen=True)
class Window:
    start: int
    end: int


def usage_window(start: int | None, end: int | None, now: int) -> Window:
    """The hours a usage query covers: usage is accounted per hour (by when the coordinator
    recorded it), so the start is rounded down and the end up to whole hours; nothing is
    recorded after ``now``, so the end is reported as at most ``now``. Defaults: this
    calendar month to now."""
    start = hour_floor(month_start(now) if start is None else start)
    end = now if end is None else end
    return Window(start, min(hour_ceil(end), max(now, start)))


def months_to_invoice(next_invoice_month: int | None, now: int) -> list[int]:
    """Starts of the closed months from ``next_invoice_month`` up to (not including) the current one."""
    if next_invoice_month is None:
        return []
    current = month_start(now)
    months = []
    month = next_invoice_month
    while month < current:
        months.append(month)
        month = next_month(month)
    return months


def first_invoice_month(created_at: int, now: int) -> int:
    """The first month to invoice for a workspace first seen on an invoicing plan at ``now``:
    its creation month if that is this month or the last one (a workspace created just before
    a month closed is still invoiced for it), else this month (no invoices for months spent
    on another plan)."""
    this_month = month_start(now)
    last_month = month_start(this_month - 1)
    return month_start(created_at) if created_at >= last_month else this_month


# --- caps -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CapDecision:
    hold: bool  # past the hard cap: refuse submissions, dispatch nothing queued
    notify_soft_cap: bool  # first crossing of the soft cap this month


def decide_caps(month_cost: Decimal, soft_cap: Decimal | None, hard_cap: Decimal | None,
                soft_notified_month: int | None, this_month: int) -> CapDecision:
    """A cap is reached when the month's unrounded cost is at or above it; ``None`` is no cap.
    The soft-cap event fires at most once per month."""
    hold = hard_cap is not None and month_cost >= hard_cap
    soft = soft_cap is not None and month_cost >= soft_cap and soft_notified_month != this_month
    return CapDecision(hold=hold, notify_soft_cap=soft)


def decimal_or_none(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)
