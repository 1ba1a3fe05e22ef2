"""Dates at the ends of the calendar are refused with the error envelope, never a 500."""

from __future__ import annotations

import re
from pathlib import Path

from coordinator.openapi import build_openapi
from tests.inproc import running_coordinator


def _month_pattern() -> str:
    for parameter in build_openapi()["paths"]["/v0/billing/usage/daily"]["get"]["parameters"]:
        if parameter["name"] == "month":
            return str(parameter["schema"]["pattern"])
    raise AssertionError("no month parameter")


async def test_daily_usage_months_at_the_ends_of_the_calendar_are_refused_not_a_500(tmp_path: Path) -> None:
    """``month=9999-12`` was a 500 (the month after it is not a date); years before 1970 gave
    dates such as ``1-01-01``. The document's pattern says what the server does."""
    async with running_coordinator(tmp_path) as coord, coord.client() as member:
        for month in ("9999-12", "9999-01", "0001-01", "1969-12"):
            answer = await member.get("/v0/billing/usage/daily", params={"month": month})
            assert answer.status_code == 400, (month, answer.text)
            assert answer.json()["error"]["field"] == "month"
        for month in ("1970-01", "9998-12", "2026-04"):
            answer = await member.get("/v0/billing/usage/daily", params={"month": month})
            assert answer.status_code == 200 and answer.json()["month"] == month, answer.text
    pattern = re.compile(_month_pattern())
    assert all(pattern.match(m) for m in ("1970-01", "2026-04", "9998-12"))
    assert not any(pattern.match(m) for m in ("9999-12", "1969-12", "0001-01", "2026-13"))


async def test_times_past_the_calendar_in_utc_are_refused_not_a_500(tmp_path: Path) -> None:
    """``9999-12-31T23:59:59-14:00`` is in year 10000 in UTC (and ``0001-01-01T00:00:00+14:00``
    in year 0): converting either overflowed into a 500 on every time parameter."""
    async with running_coordinator(tmp_path) as coord, coord.client() as owner:
        for moment in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
            answers = {
                "createdBefore": await owner.get("/v0/jobs", params={"createdBefore": moment}),
                "until": await owner.get(f"/v0/workspaces/{coord.workspace_id}/audit", params={"until": moment}),
                "windowStart": await owner.get("/v0/billing/usage", params={"windowStart": moment}),
                "expiresAt": await owner.post("/v0/registration-tokens", json={"name": "r", "expiresAt": moment}),
            }
            for name, answer in answers.items():
                assert answer.status_code in (400, 422), (moment, name, answer.text)
                assert answer.json()["error"]["field"] == name, (moment, answer.text)
