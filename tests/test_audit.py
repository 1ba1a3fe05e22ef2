"""The audit log API: filters, paging, the JSON Lines export, denials, and no way to change a row."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from common.clock import to_millis
from coordinator.api import audit as audit_api
from coordinator.store.sqlite_core import open_sync_connection
from tests.inproc import InProcess, running_coordinator

JOB = {"type": "COMMAND", "command": "true"}


async def _seed(coord: InProcess, count: int) -> None:
    """``count`` rows, one second apart, alternating actions and actors; written in one transaction."""
    start = to_millis(coord.clock.now())

    def write(conn: sqlite3.Connection) -> None:
        conn.executemany(
            """INSERT INTO audit_events (id, workspace_id, at, actor, action, target, result, status, request_id,
                                         source, method, path) VALUES (?, ?, ?, ?, ?, ?, 'success', 200, ?, '1.2.3.4',
                                         'POST', '/v0/x')""",
            [(f"aud_seed{i:05d}", coord.workspace_id, start + i * 1000, f"usr_{i % 3}",
              "job.submit" if i % 2 else "job.cancel", f"job_{i}", f"req_{i}") for i in range(count)],
        )

    await coord.store._write(write)


async def test_filters_and_paging(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as api:
        await _seed(coord, 30)
        path = f"/v0/workspaces/{coord.workspace_id}/audit"
        seen: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 7, "action": "job.submit"}
            if cursor:
                params["cursor"] = cursor
            page = (await api.get(path, params=params)).json()
            seen += page["items"]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert [row["target"] for row in seen] == [f"job_{i}" for i in range(29, 0, -2)]  # newest first
        first = seen[-1]
        assert set(first) == {"id", "time", "actor", "action", "target", "result", "status", "errorCode",
                              "requestId", "sourceAddress", "method", "path"}
        assert first["sourceAddress"] == "1.2.3.4" and first["time"] == "2026-04-26T09:00:01.000Z"
        window = (await api.get(path, params={"since": "2026-04-26T09:00:10Z", "until": "2026-04-26T09:00:13Z",
                                              "actor": "usr_1"})).json()["items"]
        assert [row["target"] for row in window] == [f"job_{i}" for i in (10,)]
        both = (await api.get(path, params=[("action", "job.submit"), ("action", "job.cancel"),
                                            ("limit", "500")])).json()["items"]
        assert len(both) == 30
        bad = await api.get(path, params={"since": "yesterday"})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "since"
        assert (await api.get(path, params={"cursor": "nope"})).status_code == 400
        assert (await api.get(path, params={"format": "xml"})).status_code == 422


async def test_jsonl_export_streams_every_matching_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_api, "STREAM_PAGE", 7)  # many store pages for few rows
    async with running_coordinator(tmp_path) as coord, coord.client() as api:
        await _seed(coord, 50)
        path = f"/v0/workspaces/{coord.workspace_id}/audit"
        async with api.stream("GET", path, params={"format": "jsonl", "action": "job.cancel"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/jsonl")
            assert "content-length" not in response.headers  # streamed, not assembled first
            lines = [line async for line in response.aiter_lines() if line]
        rows = [json.loads(line) for line in lines]
        assert [row["target"] for row in rows] == [f"job_{i}" for i in range(48, -1, -2)]
        assert all(row["action"] == "job.cancel" for row in rows)


async def test_denials_are_audited_where_the_caller_belongs(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        member_token = await coord.add_member("member")
        async with coord.client(member_token) as member:
            forbidden = await member.post("/v0/tokens", json={"name": "x"})
        assert forbidden.status_code == 403
        rows = {row["request_id"]: dict(row) for row in coord.store.read_now("SELECT * FROM audit_events")}
        denied = rows[forbidden.headers["X-Request-Id"]]
        assert (denied["workspace_id"], denied["result"], denied["status"], denied["error_code"],
                denied["action"]) == (coord.workspace_id, "denied", 403, "insufficient_role", "token.create")
        # Failed authentication (401) is counted per address and minute instead of row by row
        # (tests/security/test_unauthenticated_limits.py): a flood must not grow the audit log.
        async with coord.client("tcp_pat_unknown") as stranger:
            unknown = await stranger.post("/v0/jobs", json=JOB)
        assert unknown.status_code == 401
        assert unknown.headers["X-Request-Id"] not in {
            row["request_id"] for row in coord.store.read_now("SELECT request_id FROM audit_events")}


async def test_reads_are_not_audited_and_rows_cannot_be_changed(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as api:
        path = f"/v0/workspaces/{coord.workspace_id}/audit"
        assert (await api.get("/v0/jobs")).status_code == 200
        assert coord.store.read_now("SELECT COUNT(*) FROM audit_events")[0][0] == 0
        for method in ("PUT", "PATCH", "DELETE", "POST"):
            assert (await api.request(method, path)).status_code == 405
        for method in ("PUT", "PATCH", "DELETE"):
            assert (await api.request(method, f"{path}/aud_x")).status_code in {404, 405}


def test_audit_rows_cannot_be_updated_or_deleted_in_the_store(tmp_path: Path) -> None:
    with open_sync_connection(tmp_path / "s.sqlite3") as conn:
        conn.execute("""INSERT INTO audit_events (id, workspace_id, at, action, result, status, request_id, method,
                        path) VALUES ('aud_1', 'ws_1', 1, 'x', 'success', 200, 'req_1', 'POST', '/v0/x')""")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit_events SET action = 'y'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit_events")
