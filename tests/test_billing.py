"""coordinator.billing and coordinator.webhooks decisions, pure: money, time, caps, retries, URLs."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from common.config import ConfigError
from common.errors import Unprocessable
from coordinator import billing, webhooks


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * 1000  # type: ignore[misc]


def test_money_rounds_once_half_up_to_cents() -> None:
    assert billing.round_usd(Decimal("0.125")) == Decimal("0.13")  # banker's rounding would say 0.12
    assert billing.round_usd(Decimal("0.135")) == Decimal("0.14")
    assert billing.round_usd(Decimal("0.1249999")) == Decimal("0.12")
    prices = billing.Prices(cpu_second=Decimal("0.001"), gb_second=Decimal("0.0005"), gpu_second=Decimal("0.01"),
                            gpu_second_by_model={"H100": Decimal("0.02")})
    usage = billing.UsageTotals()
    # Three jobs of 0.0041 USD each: rounding each would give 0.00 three times; the sum rounds to 0.01.
    for _ in range(3):
        usage.add("", billing.to_micros(4.1), 0, 0)
    assert billing.round_usd(billing.cost(usage, prices)) == Decimal("0.01")
    usage.add("H100", 0, billing.to_micros(10), billing.to_micros(2))
    usage.add("", 0, billing.to_micros(10), 0)
    assert billing.cost(usage, prices) == Decimal("0.0123") + Decimal("0.2") + Decimal("0.1") + Decimal("0.001")


def test_micros_keep_the_agents_figure_to_the_microsecond() -> None:
    assert billing.to_micros(0.1) == 100_000
    assert billing.to_micros(1.0000005) == 1_000_001  # half-up
    assert billing.to_micros(None) == 0
    # Cumulative figures telescope: the deltas add up to the last figure exactly.
    figures = [0.1, 0.30000000000000004, 2.675, 1e6 + 0.000001]
    deltas = [billing.to_micros(b) - billing.to_micros(a) for a, b in zip([0.0, *figures], figures, strict=False)]
    assert sum(deltas) == billing.to_micros(figures[-1])


def test_month_boundaries_are_utc_calendar_months() -> None:
    assert billing.month_start(ms(2026, 3, 31, 23, 59, 59)) == ms(2026, 3, 1)
    assert billing.next_month(ms(2026, 12, 15)) == ms(2027, 1, 1)
    assert billing.next_month(ms(2028, 2, 1)) == ms(2028, 3, 1)
    assert billing.months_to_invoice(ms(2026, 1, 1), ms(2026, 4, 1)) == [ms(2026, 1, 1), ms(2026, 2, 1),
                                                                         ms(2026, 3, 1)]
    assert billing.months_to_invoice(ms(2026, 4, 1), ms(2026, 4, 30, 23, 59)) == []
    assert billing.months_to_invoice(None, ms(2026, 4, 1)) == []
    assert billing.first_invoice_month(ms(2026, 3, 31, 23, 59), ms(2026, 4, 1, 0, 1)) == ms(2026, 3, 1)
    assert billing.first_invoice_month(ms(2026, 4, 2), ms(2026, 4, 3)) == ms(2026, 4, 1)
    assert billing.first_invoice_month(ms(2025, 1, 2), ms(2026, 4, 3)) == ms(2026, 4, 1)


def test_usage_window_is_whole_hours_and_never_past_now() -> None:
    now = ms(2026, 4, 26, 9, 13)
    default = billing.usage_window(None, None, now)
    assert (default.start, default.end) == (ms(2026, 4, 1), now)
    explicit = billing.usage_window(ms(2026, 4, 2, 10, 30), ms(2026, 4, 3, 11, 5), now)
    assert (explicit.start, explicit.end) == (ms(2026, 4, 2, 10), ms(2026, 4, 3, 12))
    future = billing.usage_window(ms(2026, 4, 26), ms(2026, 5, 1), now)
    assert future.end == now


@pytest.mark.parametrize(
    ("cost", "soft", "hard", "notified", "hold", "notify"),
    [
        ("9.99", "10", "20", None, False, False),
        ("10", "10", "20", None, False, True),  # at the cap counts
        ("10", "10", "20", "THIS", False, False),  # once a month
        ("10", "10", "20", "LAST", False, True),
        ("20", None, "20", None, True, False),
        ("0", None, "0", None, True, False),  # a hard cap of 0 stops all new work
        ("1000", None, None, None, False, False),  # null: no cap
    ],
)
def test_cap_decisions(cost: str, soft: str | None, hard: str | None, notified: str | None,
                       hold: bool, notify: bool) -> None:
    month = ms(2026, 4, 1)
    notified_month = {"THIS": month, "LAST": ms(2026, 3, 1), None: None}[notified]
    decision = billing.decide_caps(Decimal(cost), billing.decimal_or_none(soft), billing.decimal_or_none(hard),
                                   notified_month, month)
    assert (decision.hold, decision.notify_soft_cap) == (hold, notify)


def test_billing_config_from_toml() -> None:
    config = billing.config_from_toml({"cpu_second_usd": "0.00002", "gpu_second_usd": 0.001,
                                       "gpu_second_usd_by_model": {"NVIDIA H100": "0.002"},
                                       "meter_interval_seconds": 5})
    assert config.prices.cpu_second == Decimal("0.00002")
    assert config.prices.gpu_second == Decimal("0.001")
    assert config.prices.gpu_price("NVIDIA H100") == Decimal("0.002")
    assert config.prices.gpu_price("other") == Decimal("0.001")
    assert config.meter_interval_seconds == 5.0
    with pytest.raises(ConfigError, match=r"^c: unknown option\(s\) billing.cpu_price$"):
        billing.config_from_toml({"cpu_price": 1}, "c")
    with pytest.raises(ConfigError, match=r"^c: billing.gb_second_usd must be zero or more$"):
        billing.config_from_toml({"gb_second_usd": -1}, "c")


def test_retry_schedule_is_exponential_jittered_and_stops_after_the_window() -> None:
    config = webhooks.DeliveryConfig(retry_base_seconds=10, retry_max_seconds=3600, retry_window_seconds=86400)
    rng = random.Random(7)
    now = queued = 0
    delays = []
    attempts = 0
    while True:
        attempts += 1
        decision = webhooks.retry_after_failure(attempts, queued, now, config, rng)
        if decision.give_up:
            break
        assert decision.next_attempt_at is not None
        delays.append(decision.next_attempt_at - now)
        now = decision.next_attempt_at
    for attempt, delay in enumerate(delays[:8], start=1):
        ceiling = min(10 * 2 ** (attempt - 1), 3600) * 1000
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 3600 * 1000
    assert now <= 86400 * 1000 < now + 3600 * 1000  # retried right up to the window, not past it
    assert len(set(delays)) == len(delays)  # jittered


async def _resolve_to(address: str) -> webhooks.Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        return [address]

    return resolve


@pytest.mark.parametrize(
    ("url", "address", "allow_private", "message"),
    [
        ("ftp://example.com/x", "93.184.216.34", True, r"^url must be an http or https URL$"),
        ("http://127.0.0.1:9/x", "", False, r"^url host '127.0.0.1' resolves to 127.0.0.1, a loopback address; "),
        ("http://internal.example/x", "10.1.2.3", False, r"resolves to 10.1.2.3, a private address"),
        ("http://[::1]/x", "", False, r"resolves to ::1, a loopback address"),
        ("http://169.254.169.254/latest", "", True, r"resolves to 169.254.169.254, a cloud metadata address$"),
        ("http://metadata.example/", "169.254.10.1", True, r"a link-local address$"),
        ("http://[::ffff:10.0.0.1]/", "", False, r"a private address"),
        ("http://user:pw@example.com/", "93.184.216.34", False, r"^url must not carry credentials$"),
    ],
)
async def test_url_refusals(url: str, address: str, allow_private: bool, message: str) -> None:
    with pytest.raises(Unprocessable, match=message) as caught:
        await webhooks.check_url(url, allow_private=allow_private, resolve=await _resolve_to(address))
    assert caught.value.field == "url"


@pytest.mark.parametrize(
    ("url", "address", "allow_private", "vetted"),
    [
        ("https://hooks.example.com/x", "93.184.216.34", False, ["93.184.216.34"]),
        ("http://127.0.0.1:8000/x", "", True, ["127.0.0.1"]),
        ("http://receiver.lan/x", "192.168.1.20", True, ["192.168.1.20"]),
    ],
)
async def test_url_acceptances(url: str, address: str, allow_private: bool, vetted: list[str]) -> None:
    # The addresses returned are the ones the delivery worker will connect to.
    assert await webhooks.check_url(url, allow_private=allow_private, resolve=await _resolve_to(address)) == vetted


def test_price_versions_take_effect_at_the_next_hour_and_cut_windows() -> None:
    old, new = billing.Prices(), billing.Prices(cpu_second=Decimal("1"))
    first = billing.new_price_version([], old, 5 * billing.HOUR_MS + 10)
    assert first == billing.PriceVersion(0, old)  # the first version covers all time
    assert billing.new_price_version([first], billing.Prices(), 7 * billing.HOUR_MS) is None
    change = billing.new_price_version([first], new, 7 * billing.HOUR_MS + 1)
    assert change == billing.PriceVersion(8 * billing.HOUR_MS, new)
    assert billing.prices_from_json(billing.prices_to_json(new)) == new
    spans = billing.priced_spans([first, change], 6 * billing.HOUR_MS, 10 * billing.HOUR_MS)
    assert spans == [(6 * billing.HOUR_MS, 8 * billing.HOUR_MS, old), (8 * billing.HOUR_MS, 10 * billing.HOUR_MS, new)]
    assert billing.priced_spans([change], 0, 9 * billing.HOUR_MS, old)[0] == (0, 8 * billing.HOUR_MS, old)
