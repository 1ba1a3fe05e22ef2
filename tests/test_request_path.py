"""What a submission costs the store: one trip through the writer, the audit row committed with
the job and built from what the request already knew (nothing parsed back out of the response)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.inproc import running_coordinator

JOB = {"type": "COMMAND", "command": "true", "timeoutSeconds": 30}


async def test_a_submission_is_one_write_with_its_audit_row(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as owner:
        assert (await owner.get("/v0/jobs")).status_code == 200  # warm: nothing below is start-up work
        writes: list[Callable[..., Any]] = []
        original = coord.store._write

        async def counting(fn: Callable[..., Any]) -> Any:
            writes.append(fn)
            return await original(fn)

        coord.store._write = counting  # type: ignore[method-assign]
        response = await owner.post("/v0/jobs", json=JOB)
        assert response.status_code == 201, response.text
        assert len(writes) == 1
        job_id = response.json()["id"]
        rows = coord.store.read_now("SELECT action, target, result, status, request_id FROM audit_events "
                                 "WHERE action = 'job.submit'")
        assert [(row["target"], row["result"], row["status"], row["request_id"]) for row in rows] == [
            (job_id, "success", 201, response.headers["X-Request-Id"])]


async def test_an_idempotent_replay_is_audited_against_the_first_job(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as owner:
        first = await owner.post("/v0/jobs", json=JOB, headers={"Idempotency-Key": "k1"})
        again = await owner.post("/v0/jobs", json=JOB, headers={"Idempotency-Key": "k1"})
        assert again.headers["Idempotent-Replayed"] == "true"
        rows = coord.store.read_now("SELECT target FROM audit_events WHERE action = 'job.submit' ORDER BY seq")
        assert [row["target"] for row in rows] == [first.json()["id"]] * 2


async def test_a_refused_submission_is_audited_with_its_error_code(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as owner:
        refused = await owner.post("/v0/jobs", json={**JOB, "env": {"CUDA_VISIBLE_DEVICES": "0"}})
        assert refused.status_code == 400
        rows = coord.store.read_now("SELECT result, status, error_code FROM audit_events WHERE action = 'job.submit'")
        assert [tuple(row) for row in rows] == [("failed", 400, refused.json()["error"]["code"])]
