"""Billing over real HTTP: usage from agent events (replays included), estimates to the cent,
caps applied at the meter tick, invoices by plan."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.procs import REFERENCE_JOB, Coordinator, wait_for

FREE = {"cpus": 4096, "memoryMb": 8192, "gpus": 0}


class FakeAgent:
    """The agent protocol spoken by the test itself, to send exactly the usage events it wants."""

    def __init__(self, coord: Coordinator) -> None:
        registered = httpx.post(f"{coord.url}/agent/v0/register",
                                headers={"Authorization": f"Bearer {coord.registration_token}"},
                                json={"name": "fake", "labels": {"arch": "arm64"}, "capacity": FREE, "version": "t"})
        assert registered.status_code == 201, registered.text
        self.client = httpx.Client(base_url=coord.url, timeout=10,
                                   headers={"Authorization": f"Bearer {registered.json()['agentToken']}"})
        self.seq = 0

    def claim(self) -> dict[str, Any] | None:
        response = self.client.post("/agent/v0/claim", json={"free": FREE, "waitSeconds": 0.5})
        assert response.status_code in (200, 204), response.text
        return response.json() if response.status_code == 200 else None

    def event(self, kind: str, job: dict[str, Any], **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"type": kind, "seq": self.seq, "jobId": job["jobId"], "epoch": job["epoch"], **fields}

    def send(self, *events: dict[str, Any]) -> None:
        response = self.client.post("/agent/v0/events", json={"events": list(events)})
        assert response.status_code == 200 and response.json()["rejected"] == [], response.text

    def close(self) -> None:
        self.client.close()


def now_text() -> str:
    return datetime.now(UTC).isoformat()


def test_usage_counts_replays_once_and_estimates_half_up(fast: Coordinator) -> None:
    agent = FakeAgent(fast)
    with fast.client() as api:
        job_ids = [api.post("/v0/jobs", json=REFERENCE_JOB).json()["id"] for _ in range(2)]
        first, second = agent.claim(), agent.claim()
        assert first is not None and second is not None
        agent.send(agent.event("started", first, at=now_text()), agent.event("started", second, at=now_text()))
        # The coordinator refuses usage beyond capacity x wall time: 100 CPU-seconds on this host's
        # 4,096 CPUs are physically possible 25 ms after the claim, so let that much time pass.
        time.sleep(0.1)
        # Cumulative figures: the ledger keeps the differences.
        usage_1 = agent.event("usage", first, cpuSeconds=40.0, gbSeconds=2.0, gpuSeconds=0.0)
        usage_2 = agent.event("usage", first, cpuSeconds=100.0, gbSeconds=4.0, gpuSeconds=0.0)
        usage_3 = agent.event("usage", second, cpuSeconds=25.0, gbSeconds=0.5, gpuSeconds=0.0)
        agent.send(usage_1, usage_2, usage_3)
        agent.send(usage_1, usage_2, usage_3)  # the whole batch again: an answer was lost
        agent.send(usage_2)  # and one event alone, again
        agent.send(agent.event("finished", first, at=now_text(), state="SUCCEEDED", exitCode=0, runtimeMs=5))

        usage = api.get("/v0/billing/usage").json()
        assert set(usage) == {"windowStart", "windowEnd", "cpuSeconds", "gpuSeconds", "gbSeconds", "gpuMemoryGbSeconds",
                         "gpuUtilSeconds", "estimateUsd"}
        jobs = [api.get(f"/v0/jobs/{job_id}").json() for job_id in job_ids]
        assert usage["cpuSeconds"] == sum(job["usage"]["cpuSeconds"] for job in jobs) == 125.0
        assert usage["gbSeconds"] == sum(job["usage"]["gbSeconds"] for job in jobs) == 4.5
        # 125 CPU-seconds at $0.001 = $0.125, plus 4.5 GB-seconds at the default $0.0000015 = $0.00000675:
        # $0.12500675 rounds to 0.13.
        assert usage["estimateUsd"] == 0.13
        month = datetime.now(UTC).strftime("%Y-%m-01T00:00:00.000Z")
        assert usage["windowStart"] == month
        # Whole hours: the window from the start of this hour has it all; one ending at the hour, none.
        hour = datetime.now(UTC).strftime("%Y-%m-%dT%H:00:00Z")
        assert api.get("/v0/billing/usage", params={"windowStart": hour}).json()["cpuSeconds"] == 125.0
        before = api.get("/v0/billing/usage", params={"windowStart": month, "windowEnd": hour}).json()
        assert before["cpuSeconds"] == 0 and before["estimateUsd"] == 0
        # The meter tick folds the records into roll-ups without changing any figure.
        wait_for(lambda: _rolled_up(fast), message="a meter tick")
        assert api.get("/v0/billing/usage").json()["cpuSeconds"] == 125.0
        bad = api.get("/v0/billing/usage", params={"windowStart": "yesterday"})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "windowStart"
        backwards = api.get("/v0/billing/usage", params={"windowStart": hour, "windowEnd": month})
        assert backwards.status_code == 422 and backwards.json()["error"]["field"] == "windowEnd"
    agent.close()


def _rolled_up(coord: Coordinator) -> bool:
    with sqlite3.connect(coord.data_dir / "coordinator.sqlite3") as conn:
        return bool(conn.execute("SELECT COUNT(*) FROM usage_records WHERE rolled_up = 0").fetchone()[0] == 0
                    and conn.execute("SELECT COUNT(*) FROM usage_hourly").fetchone()[0] > 0)


def test_hard_cap_holds_work_at_the_tick_and_raising_it_releases(fast: Coordinator) -> None:
    agent = FakeAgent(fast)
    with fast.client() as api:
        assert api.get("/v0/billing/limits").json() == {
            "softCapUsd": None, "hardCapUsd": None, "effectiveAt": None, "pending": False, "hardCapReached": False}
        refused = api.patch("/v0/billing/limits", json={"softCapUsd": 5, "hardCapUsd": 2.5})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "hardCapUsd"
        assert api.patch("/v0/billing/limits", json={"hardCapUsd": "1"}).json()["error"]["code"] == "invalid_type"
        assert api.patch("/v0/billing/limits", json={"hardCapUsd": -1}).status_code == 422
        queued = api.post("/v0/jobs", json=REFERENCE_JOB, headers={"Idempotency-Key": "before-the-cap"}).json()["id"]
        sent = datetime.now(UTC)
        changed = api.patch("/v0/billing/limits", json={"softCapUsd": 0, "hardCapUsd": 0})
        received = datetime.now(UTC)
        assert changed.status_code == 200
        body = changed.json()
        assert body["pending"] is True and body["hardCapUsd"] == 0 and body["softCapUsd"] == 0
        effective = datetime.fromisoformat(body["effectiveAt"].replace("Z", "+00:00"))
        # The next tick (0.2 s apart) after the request was handled, whenever the loaded machine handled it.
        assert sent - timedelta(milliseconds=1) <= effective <= received + timedelta(seconds=0.2)
        wait_for(lambda: api.get("/v0/billing/limits").json()["hardCapReached"], message="the tick applying caps")
        refused_job = api.post("/v0/jobs", json=REFERENCE_JOB)
        assert refused_job.status_code == 403
        assert refused_job.json()["error"]["code"] == "hard_cap_reached"
        # A retry of a job submitted before the cap is answered with that job, not refused.
        retried = api.post("/v0/jobs", json=REFERENCE_JOB, headers={"Idempotency-Key": "before-the-cap"})
        assert (retried.status_code, retried.json()["id"]) == (201, queued)
        assert retried.headers["Idempotent-Replayed"] == "true"
        assert agent.claim() is None  # the queued job is held
        assert api.get(f"/v0/jobs/{queued}").json()["state"] == "QUEUED"
        # Raising the cap (null: none) releases it at the next tick.
        assert api.patch("/v0/billing/limits", json={"hardCapUsd": None}).json()["pending"] is True
        wait_for(lambda: not api.get("/v0/billing/limits").json()["hardCapReached"], message="release")
        claimed = agent.claim()
        assert claimed is not None and claimed["jobId"] == queued
        assert api.post("/v0/jobs", json=REFERENCE_JOB).status_code == 201
        limits = api.get("/v0/billing/limits").json()
        assert limits["softCapUsd"] == 0 and limits["hardCapUsd"] is None and limits["pending"] is False
    agent.close()


def test_invoices_by_plan(fast: Coordinator, coordinator: Coordinator) -> None:
    with fast.client() as api:  # payg
        assert api.get("/v0/billing/invoices").json() == {"items": [], "nextCursor": None}
    with coordinator.client() as api:  # hobby
        response = api.get("/v0/billing/invoices")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "plan_has_no_invoices"
