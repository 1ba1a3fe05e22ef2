"""``GET /v0/jobs`` filters (state, label, createdAfter/createdBefore) and cursor paging with them."""

from __future__ import annotations

from pathlib import Path

import httpx

from common.clock import ManualClock
from common.protocol import CapacityMsg, ClaimRequest
from tests.inproc import open_inprocess


async def _all_pages(api: httpx.AsyncClient, params: list[tuple[str, str]], limit: int) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = [*params, ("limit", str(limit))] + ([("cursor", cursor)] if cursor else [])
        response = await api.get("/v0/jobs", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        seen += [job["id"] for job in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            return seen


async def test_filters_and_paging(tmp_path: Path) -> None:
    clock = ManualClock()
    async with open_inprocess(tmp_path, clock=clock) as co, co.client() as api:
        ids: list[str] = []
        times: list[str] = []
        for index in range(12):
            labels = {"team": "red" if index % 2 else "blue", "size": "big" if index % 3 == 0 else "small"}
            created = (await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true",
                                                        "labels": labels})).json()
            ids.append(created["id"])
            times.append(created["createdAt"])
            clock.advance(60)
        newest_first = list(reversed(ids))
        # Two jobs leave QUEUED: one claimed (ASSIGNED), one cancelled.
        _, agent = await co.register_agent(labels={"team": "blue", "size": "big"})
        async with agent:
            claim = ClaimRequest(free=CapacityMsg(cpus=1, memoryMb=1024, gpus=0), waitSeconds=0)
            assigned = (await agent.post("/agent/v0/claim", content=claim.model_dump_json(),
                                         headers={"Content-Type": "application/json"})).json()["jobId"]
        assert assigned == ids[0]  # oldest first
        await api.post(f"/v0/jobs/{ids[5]}:cancel")

        assert await _all_pages(api, [], 5) == newest_first
        assert await _all_pages(api, [("state", "QUEUED")], 3) == [i for i in newest_first if i not in (ids[0], ids[5])]
        assert await _all_pages(api, [("state", "ASSIGNED"), ("state", "CANCELLED")], 1) == [ids[5], ids[0]]
        assert await _all_pages(api, [("state", "RUNNING")], 5) == []

        red = [ids[i] for i in range(12) if i % 2]
        assert await _all_pages(api, [("label", "team=red")], 2) == list(reversed(red))
        red_big = [ids[i] for i in range(12) if i % 2 and i % 3 == 0]
        assert await _all_pages(api, [("label", "team=red"), ("label", "size=big")], 1) == list(reversed(red_big))
        assert await _all_pages(api, [("label", "team=green")], 5) == []

        # Bounds are exclusive: after job 3's time and before job 9's → jobs 4..8.
        window = [("createdAfter", times[3]), ("createdBefore", times[9])]
        assert await _all_pages(api, window, 2) == list(reversed(ids[4:9]))
        # All filters at once, paged one by one.
        combined = [*window, ("label", "team=blue"), ("state", "QUEUED")]
        assert await _all_pages(api, combined, 1) == [ids[8], ids[6], ids[4]]


async def test_filter_errors(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        cases = [
            ({"state": "DONE"}, 422, "invalid_value", "state"),
            ({"label": "novalue"}, 400, "invalid_type", "label"),
            ({"createdAfter": "yesterday"}, 400, "invalid_type", "createdAfter"),
            ({"createdBefore": "2026-01-01T00:00:00"}, 400, "invalid_type", "createdBefore"),
            ({"cursor": "garbage!"}, 400, "invalid_cursor", "cursor"),
            ({"limit": "0"}, 422, "invalid_value", "limit"),
            ({"limit": "501"}, 422, "invalid_value", "limit"),
        ]
        for params, status, code, field in cases:
            response = await api.get("/v0/jobs", params=params)
            assert response.status_code == status, params
            error = response.json()["error"]
            assert (error["code"], error["field"]) == (code, field), params
