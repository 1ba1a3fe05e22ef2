"""The usage ledger, roll-ups, caps and invoices in the real SQLite store, with an injected clock."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from common.clock import ManualClock, to_millis
from common.protocol import CapacityMsg, FinishedEvent, HandbackEvent, StartedEvent, UsageEvent
from common.states import AgentState, JobState
from coordinator import billing
from coordinator.billing import BillingConfig, Prices
from coordinator.meter import run_tick
from coordinator.notify import Notifier
from coordinator.store.base import AgentRecord, JobRecord, TokenRecord
from coordinator.store.base_billing import WebhookRecord
from coordinator.store.errors import InvalidValue
from coordinator.store.factory import open_store
from coordinator.store.sqlite import SqliteStore

FREE = CapacityMsg(cpus=64, memoryMb=1 << 20, gpus=8)
PRICES = Prices(cpu_second=Decimal("0.001"), gpu_second=Decimal("0.01"), gb_second=Decimal("0.0001"),
                gpu_second_by_model={"H100": Decimal("0.02")})
CONFIG = BillingConfig(prices=PRICES, meter_interval_seconds=60)


class Ledger:
    """A workspace with one agent, driving jobs through the real store as an agent would."""

    def __init__(self, store: SqliteStore, clock: ManualClock) -> None:
        self.store = store
        self.clock = clock
        self.seq = 0
        self.jobs = 0
        self.notifier = Notifier()

    @property
    def now(self) -> int:
        return to_millis(self.clock.now())

    async def start_job(self) -> tuple[str, int]:
        self.jobs += 1
        job_id = f"job_{self.jobs:05d}"
        await self.store.insert_job(JobRecord(
            id=job_id, workspace_id="ws_1", state=JobState.QUEUED, command="true", name=None, labels={},
            # Every GPU of the host: GPU-seconds are bounded by the GPUs the job asked for.
            resources={"gpus": FREE.gpus}, env={}, timeout_seconds=60, created_at=self.now))
        assignment = await self.store.claim_job("agt_1", FREE, None, self.now)
        assert assignment is not None and assignment.jobId == job_id
        await self.send(StartedEvent(seq=self.next_seq(), jobId=job_id, epoch=assignment.epoch,
                                     at=self.clock.now().isoformat()))
        return job_id, assignment.epoch

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def usage(self, job_id: str, epoch: int, cpu: float, gpu: float = 0.0, gb: float = 0.0) -> UsageEvent:
        return UsageEvent(seq=self.next_seq(), jobId=job_id, epoch=epoch, cpuSeconds=cpu, gpuSeconds=gpu,
                          gbSeconds=gb)

    async def send(self, *events: object) -> None:
        response = await self.store.apply_events("agt_1", list(events), self.now)  # type: ignore[arg-type]
        assert response.rejected == []

    async def finish(self, job_id: str, epoch: int) -> None:
        await self.send(FinishedEvent(seq=self.next_seq(), jobId=job_id, epoch=epoch, at=self.clock.now().isoformat(),
                                      state=JobState.SUCCEEDED, exitCode=0, runtimeMs=1))

    async def tick(self) -> billing.BillingConfig:
        await run_tick(self.store, self.clock, CONFIG, self.notifier)
        return CONFIG

    async def month_usage(self, month: datetime) -> billing.UsageTotals:
        start = to_millis(month)
        return await self.store.usage_totals("ws_1", start, billing.next_month(start))


@asynccontextmanager
async def ledger(store_url: str, start: datetime, plan: str = "payg", gpu_model: str | None = None,
                 ) -> AsyncIterator[Ledger]:
    clock = ManualClock(start)
    async with open_store(store_url) as store:
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan=plan,
                              tokens=[], now=to_millis(start))
        labels = {"gpuModel": gpu_model} if gpu_model else {}
        await store.register_agent(
            AgentRecord(id="agt_1", workspace_id="ws_1", name="a", state=AgentState.READY, labels=labels,
                        capacity=FREE.model_dump(), version="t", registered_at=0),
            TokenRecord(id="tok_a", kind="agent", token_hash="h", workspace_id="ws_1", user_id=None,
                        agent_id="agt_1", name="a", created_at=0),
        )
        yield Ledger(store, clock)


async def test_replayed_usage_counts_once(store_url: str) -> None:
    async with ledger(store_url, datetime(2026, 4, 10, tzinfo=UTC)) as world:
        job_id, epoch = await world.start_job()
        first = world.usage(job_id, epoch, cpu=1.5, gb=0.25)
        second = world.usage(job_id, epoch, cpu=3.25, gb=0.5)
        await world.send(first, second)
        # The agent lost the answer and sends the same batch twice more, and one event again alone.
        await world.send(first, second)
        await world.send(second)
        rows = world.store.read_now("SELECT COUNT(*) AS n FROM usage_records")
        assert rows[0]["n"] == 2
        usage = await world.month_usage(datetime(2026, 4, 1, tzinfo=UTC))
        assert (usage.cpu_micros, usage.gb_micros) == (3_250_000, 500_000)
        await world.tick()
        await world.send(first, second)
        assert await world.month_usage(datetime(2026, 4, 1, tzinfo=UTC)) == usage
        job = await world.store.get_job("ws_1", job_id)
        assert job is not None and job.cpu_seconds == 3.25


async def test_every_attempt_is_billed_and_never_netted_against_another(store_url: str) -> None:
    # The case: handed back after 5.30 CPU-s, re-run to 19.08 CPU-s. Each attempt's
    # figures are cumulative from zero; the ledger must hold both, not 19.08 - 5.30.
    async with ledger(store_url, datetime(2026, 4, 10, tzinfo=UTC)) as world:
        job_id, first_epoch = await world.start_job()
        world.clock.advance(1)  # usage is bounded by capacity x wall time: it needs some wall time
        await world.send(world.usage(job_id, first_epoch, cpu=2.0, gpu=4.0, gb=0.5),
                         world.usage(job_id, first_epoch, cpu=5.30, gpu=10.0, gb=1.25))
        world.clock.advance(4)
        await world.send(HandbackEvent(seq=world.next_seq(), jobId=job_id, epoch=first_epoch,
                                       at=world.clock.now().isoformat()))
        world.clock.advance(1)
        assignment = await world.store.claim_job("agt_1", FREE, None, world.now)
        assert assignment is not None and assignment.jobId == job_id
        second_epoch = assignment.epoch
        assert second_epoch == first_epoch + 1
        await world.send(StartedEvent(seq=world.next_seq(), jobId=job_id, epoch=second_epoch,
                                      at=world.clock.now().isoformat()))
        world.clock.advance(5)
        await world.send(world.usage(job_id, second_epoch, cpu=19.08, gpu=38.0, gb=4.0))
        # A late duplicate of the first attempt's last report changes nothing (same figure).
        await world.send(world.usage(job_id, first_epoch, cpu=5.30, gpu=10.0, gb=1.25))
        await world.finish(job_id, second_epoch)
        usage = await world.month_usage(datetime(2026, 4, 1, tzinfo=UTC))
        assert (usage.cpu_micros, usage.gpu_micros, usage.gb_micros) == (24_380_000, 48_000_000, 5_250_000)
        job = await world.store.get_job("ws_1", job_id)
        assert job is not None
        assert job.cpu_seconds == pytest.approx(24.38)
        assert [(a.epoch, a.agent_id, a.state, a.reason, a.cpu_seconds) for a in job.attempts] == [
            (first_epoch, "agt_1", JobState.QUEUED, "handed_back", 5.30),
            (second_epoch, "agt_1", JobState.SUCCEEDED, None, 19.08),
        ]
        first, second = job.attempts
        assert first.started_at is not None and first.finished_at == first.started_at + 5000
        assert second.started_at == first.finished_at + 1000 and second.exit_code == 0
        assert second.finished_at is not None


async def test_sums_over_windows_equal_the_jobs_usage_to_the_cent(store_url: str) -> None:
    rng = random.Random(42)
    async with ledger(store_url, datetime(2026, 4, 10, 8, 0, tzinfo=UTC), gpu_model="H100") as world:
        running = []
        for _ in range(12):
            job_id, epoch = await world.start_job()
            running.append((job_id, epoch, [0.0, 0.0, 0.0]))
        # Six hours of cumulative reports at random moments, ticks in between, some jobs ending.
        for step in range(60):
            world.clock.advance(rng.uniform(60, 700))
            job_id, epoch, figures = running[rng.randrange(len(running))]
            figures[0] += rng.uniform(0, 500)
            figures[1] += rng.choice([0.0, rng.uniform(0, 50)])
            figures[2] += rng.uniform(0, 2000) / 3
            await world.send(world.usage(job_id, epoch, *figures))
            if step % 7 == 0:
                await world.tick()
        jobs = [job for job in [await world.store.get_job("ws_1", j) for j, _, _ in running] if job is not None]
        expected = billing.UsageTotals()
        for job in jobs:
            expected.add("H100", billing.to_micros(job.cpu_seconds), billing.to_micros(job.gpu_seconds),
                         billing.to_micros(job.gb_seconds))
        start = billing.hour_floor(to_millis(datetime(2026, 4, 10, 8, tzinfo=UTC)))
        end = billing.hour_ceil(world.now)
        whole = await world.store.usage_totals("ws_1", start, end)
        assert whole == expected
        # Any split into consecutive windows adds up to the whole, before and after a final tick.
        for _ in range(2):
            cut = start + billing.HOUR_MS * rng.randrange(1, (end - start) // billing.HOUR_MS)
            left = await world.store.usage_totals("ws_1", start, cut)
            right = await world.store.usage_totals("ws_1", cut, end)
            assert left.cpu_micros + right.cpu_micros == expected.cpu_micros
            assert left.gpu_micros + right.gpu_micros == expected.gpu_micros
            assert left.gb_micros + right.gb_micros == expected.gb_micros
            await world.tick()
        exact = (sum(Decimal(repr(job.cpu_seconds or 0.0)) for job in jobs) * Decimal("0.001")
                 + sum(Decimal(repr(job.gpu_seconds or 0.0)) for job in jobs) * Decimal("0.02")
                 + sum(Decimal(repr(job.gb_seconds or 0.0)) for job in jobs) * Decimal("0.0001"))
        estimate = billing.round_usd(billing.cost(whole, PRICES))
        assert estimate == exact.quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")


async def test_invoice_for_a_closed_month_at_the_first_tick_after_it(store_url: str) -> None:
    async with ledger(store_url, datetime(2026, 1, 31, 22, 0, tzinfo=UTC)) as world:
        await world.tick()
        job_id, epoch = await world.start_job()
        world.clock.set(datetime(2026, 1, 31, 23, 30, tzinfo=UTC))
        await world.send(world.usage(job_id, epoch, cpu=100.0, gb=10.0))
        world.clock.set(datetime(2026, 1, 31, 23, 59, 30, tzinfo=UTC))
        await world.tick()
        assert await world.store.list_invoices("ws_1", limit=10, before_id=None) == []
        # Usage reported after midnight belongs to February, though it is the same job.
        world.clock.set(datetime(2026, 2, 1, 0, 0, 30, tzinfo=UTC))
        await world.send(world.usage(job_id, epoch, cpu=150.0, gb=10.0))
        await world.finish(job_id, epoch)
        assert await world.store.list_invoices("ws_1", limit=10, before_id=None) == []
        world.clock.set(datetime(2026, 2, 1, 0, 1, tzinfo=UTC))
        result = await run_tick(world.store, world.clock, CONFIG, world.notifier)
        assert len(result.invoices) == 1
        [invoice] = await world.store.list_invoices("ws_1", limit=10, before_id=None)
        body = invoice.body
        assert (body["periodStart"], body["periodEnd"]) == ("2026-01-01T00:00:00.000Z", "2026-02-01T00:00:00.000Z")
        assert body["issuedAt"] == "2026-02-01T00:01:00.000Z"
        lines = {line["resource"]: line for line in body["lines"]}
        assert set(lines) == {"cpu", "memory"}
        assert (Decimal(lines["cpu"]["quantity"]), Decimal(lines["cpu"]["unitPriceUsd"])) == (100, Decimal("0.001"))
        assert Decimal(lines["cpu"]["amountUsd"]) == Decimal("0.1")
        assert Decimal(lines["memory"]["amountUsd"]) == Decimal("0.001")
        assert Decimal(body["subtotalUsd"]) == Decimal("0.101")
        assert body["totalUsd"] == "0.10"
        # Later ticks neither re-issue nor change it; February's usage stays in February.
        world.clock.set(datetime(2026, 2, 20, tzinfo=UTC))
        await world.tick()
        [again] = await world.store.list_invoices("ws_1", limit=10, before_id=None)
        assert again == invoice
        february = await world.month_usage(datetime(2026, 2, 1, tzinfo=UTC))
        assert february.cpu_micros == 50_000_000
        # March's first tick issues February's invoice, newest first.
        world.clock.set(datetime(2026, 3, 1, 0, 0, 5, tzinfo=UTC))
        await world.tick()
        invoices = await world.store.list_invoices("ws_1", limit=10, before_id=None)
        assert [i.body["periodStart"][:7] for i in invoices] == ["2026-02", "2026-01"]
        assert invoices[0].body["totalUsd"] == "0.05"


async def test_usage_arriving_after_a_tick_never_changes_closed_hours(store_url: str) -> None:
    async with ledger(store_url, datetime(2026, 1, 31, 23, 59, tzinfo=UTC)) as world:
        job_id, epoch = await world.start_job()
        world.clock.set(datetime(2026, 2, 1, 0, 0, 10, tzinfo=UTC))
        await world.tick()  # January closes and is invoiced
        # An event timed (by a lagging request) before that tick is booked at the tick, in February.
        world.clock.set(datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC))
        await world.send(world.usage(job_id, epoch, cpu=7.0))
        assert (await world.month_usage(datetime(2026, 1, 1, tzinfo=UTC))).cpu_micros == 0
        assert (await world.month_usage(datetime(2026, 2, 1, tzinfo=UTC))).cpu_micros == 7_000_000
        [invoice] = await world.store.list_invoices("ws_1", limit=10, before_id=None)
        assert invoice.body["totalUsd"] == "0.00"


async def test_hobby_workspaces_get_no_invoices(store_url: str) -> None:
    async with ledger(store_url, datetime(2026, 1, 15, tzinfo=UTC), plan="hobby") as world:
        await world.tick()
        world.clock.set(datetime(2026, 3, 1, tzinfo=UTC))
        await world.tick()
        assert await world.store.list_invoices("ws_1", limit=10, before_id=None) == []


async def test_caps_apply_at_the_tick_hold_queued_jobs_and_release_them(store_url: str) -> None:
    async with ledger(store_url, datetime(2026, 4, 10, tzinfo=UTC)) as world:
        await world.store.insert_webhook(
            WebhookRecord(id="whk_1", workspace_id="ws_1", url="http://r/", events=["billing.soft_cap_reached"],
                          created_at=0), "whsec_x")
        job_id, epoch = await world.start_job()
        await world.send(world.usage(job_id, epoch, cpu=4.0))  # $0.004
        await world.store.request_limits("ws_1", soft_cap_usd=Decimal("0.004"), hard_cap_usd=Decimal("0.005"))
        limits = await world.store.get_limits("ws_1")
        assert limits.pending and not limits.hard_cap_reached
        result = await run_tick(world.store, world.clock, CONFIG, world.notifier)
        assert result.soft_cap_events == ["ws_1"] and result.held == []
        limits = await world.store.get_limits("ws_1")
        assert not limits.pending and limits.effective_at == world.now
        # Cost crosses the hard cap between ticks: nothing is held until the tick decides.
        await world.send(world.usage(job_id, epoch, cpu=5.0))  # $0.005: at the cap
        await world.store.insert_job(JobRecord(
            id="job_queued", workspace_id="ws_1", state=JobState.QUEUED, command="true", name=None, labels={},
            resources=None, env={}, timeout_seconds=60, created_at=world.now))
        assert not await world.store.hard_cap_reached("ws_1")
        assert not (await world.store.submission_state("ws_1"))[0]
        world.clock.advance(60)
        result = await run_tick(world.store, world.clock, CONFIG, world.notifier)
        assert result.held == ["ws_1"] and result.soft_cap_events == []
        assert await world.store.hard_cap_reached("ws_1")
        # What a submission reads: the cap with the workspace's agents, in one query.
        reached, agents = await world.store.submission_state("ws_1")
        assert reached and len(agents) == 1
        assert await world.store.claim_job("agt_1", FREE, None, world.now) is None
        # The running job still reports and finishes.
        await world.send(world.usage(job_id, epoch, cpu=6.0))
        await world.finish(job_id, epoch)
        # Raising the cap releases the queued job at the next tick, and wakes waiting agents.
        await world.store.request_limits("ws_1", hard_cap_usd=Decimal("1"))
        assert await world.store.claim_job("agt_1", FREE, None, world.now) is None
        woken = world.notifier.work_signal("ws_1").snapshot()
        world.clock.advance(60)
        result = await run_tick(world.store, world.clock, CONFIG, world.notifier)
        assert result.released == ["ws_1"] and woken.is_set()
        assignment = await world.store.claim_job("agt_1", FREE, None, world.now)
        assert assignment is not None and assignment.jobId == "job_queued"
        # One soft-cap event this month however often the tick runs; another next month.
        for _ in range(3):
            world.clock.advance(60)
            await world.tick()
        world.clock.set(datetime(2026, 5, 1, 0, 1, tzinfo=UTC))
        await world.send(world.usage(assignment.jobId, assignment.epoch, cpu=4.5))
        await world.tick()
        events = world.store.read_now("SELECT type, body FROM webhook_events ORDER BY id")
        assert [row["type"] for row in events] == ["billing.soft_cap_reached"] * 2
        audited = world.store.read_now("SELECT actor, action, target FROM audit_events ORDER BY seq")
        assert [tuple(row) for row in audited] == [("system:meter", "billing.soft_cap_reached", "ws_1")] * 2
        first = json.loads(events[0]["body"])
        assert first["data"] == {"workspaceId": "ws_1", "periodStart": "2026-04-01T00:00:00.000Z",
                                 "softCapUsd": 0.004, "hardCapUsd": 0.005, "costUsd": 0.0}


async def test_hard_cap_below_soft_is_refused(store_url: str) -> None:
    async with ledger(store_url, datetime(2026, 4, 10, tzinfo=UTC)) as world:
        await world.store.request_limits("ws_1", soft_cap_usd=Decimal(10))
        with pytest.raises(InvalidValue, match=r"^hardCapUsd \(5\) must not be below softCapUsd \(10\)$") as caught:
            await world.store.request_limits("ws_1", hard_cap_usd=Decimal(5))
        assert caught.value.field == "hardCapUsd"
        limits = await world.store.get_limits("ws_1")
        assert (limits.soft_cap_usd, limits.hard_cap_usd) == (Decimal(10), None)


async def test_a_price_change_applies_from_the_next_hour_and_never_reprices_the_past(store_url: str) -> None:
    async with ledger(store_url, datetime(2026, 1, 20, 9, 0, tzinfo=UTC)) as world:
        await world.tick()  # the first version: the configured prices, for all time
        job_id, epoch = await world.start_job()
        world.clock.set(datetime(2026, 1, 20, 9, 30, tzinfo=UTC))
        await world.send(world.usage(job_id, epoch, cpu=100.0))
        # The coordinator restarts with CPU at double the price; its first tick records them.
        dearer = BillingConfig(prices=replace(PRICES, cpu_second=Decimal("0.002")), meter_interval_seconds=60)
        world.clock.set(datetime(2026, 1, 20, 9, 40, tzinfo=UTC))
        await run_tick(world.store, world.clock, dearer, world.notifier)
        versions = await world.store.record_prices(dearer.prices, world.now)  # idempotent: nothing new
        assert [(v.effective_at, v.prices.cpu_second) for v in versions] == [
            (0, Decimal("0.001")), (to_millis(datetime(2026, 1, 20, 10, tzinfo=UTC)), Decimal("0.002"))]
        # Usage recorded in the rest of this hour keeps the old price; from 10:00, the new one.
        world.clock.set(datetime(2026, 1, 20, 9, 50, tzinfo=UTC))
        await world.send(world.usage(job_id, epoch, cpu=150.0))
        world.clock.set(datetime(2026, 1, 20, 10, 30, tzinfo=UTC))
        await world.send(world.usage(job_id, epoch, cpu=250.0))
        await world.finish(job_id, epoch)
        month = to_millis(datetime(2026, 1, 1, tzinfo=UTC))
        cost = await world.store.usage_cost("ws_1", month, billing.next_month(month), dearer.prices)
        assert cost == 150 * Decimal("0.001") + 100 * Decimal("0.002")
        world.clock.set(datetime(2026, 2, 1, 0, 1, tzinfo=UTC))
        await run_tick(world.store, world.clock, dearer, world.notifier)
        [invoice] = await world.store.list_invoices("ws_1", limit=10, before_id=None)
        cpu_lines = [(Decimal(line["quantity"]), Decimal(line["unitPriceUsd"]), Decimal(line["amountUsd"]))
                     for line in invoice.body["lines"] if line["resource"] == "cpu"]
        assert cpu_lines == [(150, Decimal("0.001"), Decimal("0.15")), (100, Decimal("0.002"), Decimal("0.2"))]
        assert [line["resource"] for line in invoice.body["lines"]] == ["cpu", "cpu", "memory"]
        assert Decimal(invoice.body["subtotalUsd"]) == Decimal("0.35")
