"""GPU usage in the ledger: GPU-seconds priced per model the agent names (mixed hosts), and
GPU-memory GB-seconds and utilisation-seconds carried beside them, in the real SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from common.protocol import UsageEvent
from coordinator import billing
from coordinator.views import job_view
from tests.test_billing_store import PRICES, Ledger, ledger

APRIL = datetime(2026, 4, 1, tzinfo=UTC)


def _gpu_usage(world: Ledger, job_id: str, epoch: int, gpu: float, model: str | None, *,
               memory: float | None = None, util: float | None = None) -> UsageEvent:
    return UsageEvent(seq=world.next_seq(), jobId=job_id, epoch=epoch, cpuSeconds=1.0, gbSeconds=0.5, gpuSeconds=gpu,
                      gpuModel=model, gpuMemoryGbSeconds=memory, gpuUtilSeconds=util)


async def test_mixed_host_gpu_seconds_are_priced_per_model_the_agent_names(tmp_path: Path) -> None:
    async with ledger(str(tmp_path / "coordinator.sqlite3"), datetime(2026, 4, 10, tzinfo=UTC),
                      gpu_model="H100,A100") as world:
        h100_job, h100_epoch = await world.start_job()
        a100_job, a100_epoch = await world.start_job()
        old_agent_job, old_epoch = await world.start_job()
        world.clock.advance(10)  # usage is bounded by capacity x wall time: it needs some wall time
        await world.send(_gpu_usage(world, h100_job, h100_epoch, 4.0, "H100", memory=8.0, util=2.0),
                         _gpu_usage(world, h100_job, h100_epoch, 10.0, "H100", memory=20.0, util=6.0),
                         _gpu_usage(world, a100_job, a100_epoch, 5.0, "A100"),
                         _gpu_usage(world, old_agent_job, old_epoch, 1.0, None))  # no model: the agent's label
        await world.tick()  # rolled up into hours: the split and the extra figures survive it
        usage = await world.month_usage(APRIL)
        assert usage.gpu_micros_by_model == {"H100": 10_000_000, "A100": 5_000_000, "H100,A100": 1_000_000}
        assert (usage.gpu_memory_micros, usage.gpu_util_micros) == (20_000_000, 6_000_000)
        # H100 at its own price, the others at the default GPU price.
        assert billing.cost(usage, PRICES) == (Decimal(3) * PRICES.cpu_second + Decimal("1.5") * PRICES.gb_second
                                               + 10 * Decimal("0.02") + 6 * Decimal("0.01"))
        lines = billing.invoice_lines(usage, PRICES)
        assert [(line.gpu_model, line.unit_price_usd) for line in lines if line.resource == "gpu"] == [
            ("A100", Decimal("0.01")), ("H100", Decimal("0.02")), ("H100,A100", Decimal("0.01"))]
        job = await world.store.get_job("ws_1", h100_job)
        assert job is not None
        view = job_view(job)
        assert view.usage is not None
        assert (view.usage.gpuSeconds, view.usage.gpuMemoryGbSeconds, view.usage.gpuUtilSeconds) == (10.0, 20.0, 6.0)
        assert job.attempts[0].gpu_model == "H100"
        plain = await world.store.get_job("ws_1", a100_job)
        assert plain is not None and job_view(plain).usage is not None
        assert job_view(plain).usage.gpuMemoryGbSeconds is None  # type: ignore[union-attr]  # unknown, not 0
