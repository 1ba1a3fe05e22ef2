"""Input a hostile or careless client can send that one database keeps and the other refuses:
NUL characters (PostgreSQL's text cannot hold them), lone UTF-16 surrogates (neither driver can
encode them), integers beyond 64 bits. Over real HTTP on SQLite and on PostgreSQL: the answer is
the same clear 4xx on both (or the data is kept the same way), never a 500."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from common.models import MAX_SELECTOR_BYTES
from tests.inproc import open_inprocess

JSON = {"Content-Type": "application/json"}

NUL_BODIES: list[dict[str, Any]] = [
    {"type": "COMMAND", "command": "echo a\u0000b"},
    {"type": "COMMAND", "command": "true", "env": {"A": "x\u0000y"}},
    {"type": "COMMAND", "command": "true", "labels": {"gpu": "a\u0000"}},
    {"type": "COMMAND", "command": "true", "name": "n\u0000"},
]


@pytest.mark.parametrize("body", NUL_BODIES, ids=["command", "env", "label", "name"])
async def test_a_nul_in_a_job_is_refused_alike_on_both_databases(tmp_path: Path, store_url: str,
                                                                 body: dict[str, Any]) -> None:
    async with open_inprocess(tmp_path, database_url=store_url) as co, co.client() as api:
        response = await api.post("/v0/jobs", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_value"
        # Nothing was stored; the store still answers.
        listed = await api.get("/v0/jobs")
        assert listed.status_code == 200 and listed.json()["items"] == []


@pytest.mark.parametrize("raw", [b'"\\ud800"', b'"\xed\xa0\x80"', b'"a\\udfff"'],
                         ids=["escaped", "raw-bytes", "low"])
async def test_a_lone_surrogate_is_refused_alike_on_both_databases(tmp_path: Path, store_url: str,
                                                                   raw: bytes) -> None:
    async with open_inprocess(tmp_path, database_url=store_url) as co, co.client() as api:
        body = b'{"type": "COMMAND", "command": ' + raw + b"}"
        response = await api.post("/v0/jobs", content=body, headers=JSON)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_value"
        # A proper surrogate pair is a character like any other, kept as sent.
        kept = await api.post("/v0/jobs", content=b'{"type": "COMMAND", "command": "echo \\ud83d\\ude00"}',
                              headers=JSON)
        assert kept.status_code == 201, kept.text
        assert (await api.get(f"/v0/jobs/{kept.json()['id']}")).json()["command"] == "echo \U0001F600"


async def test_a_nul_in_a_webhook_url_or_path_or_query_is_refused(tmp_path: Path, store_url: str) -> None:
    async with open_inprocess(tmp_path, database_url=store_url) as co, co.client() as api:
        hook = await api.post("/v0/webhooks", json={"url": "https://example.com/\u0000", "events": ["job.created"]})
        assert hook.status_code == 422, hook.text
        for path in ("/v0/jobs/job_%00", "/v0/jobs?label=gpu%3Da%00", "/v0/agents/agt_%00"):
            response = await api.get(path)
            assert response.status_code == 422, (path, response.text)
            assert response.json()["error"]["code"] == "invalid_value"


@pytest.mark.parametrize("field", ["timeoutSeconds", "priority"])
async def test_an_integer_beyond_64_bits_is_refused_alike(tmp_path: Path, store_url: str, field: str) -> None:
    async with open_inprocess(tmp_path, database_url=store_url) as co, co.client() as api:
        for value in (b"9223372036854775808", b"-9223372036854775809", b"1e30"):
            body = b'{"type": "COMMAND", "command": "true", "' + field.encode() + b'": ' + value + b"}"
            response = await api.post("/v0/jobs", content=body, headers=JSON)
            if value == b"1e30":  # a float where an integer is wanted
                assert response.status_code == 400, response.text
                continue
            assert response.status_code == 422, (value, response.text)
            assert response.json()["error"] == {**response.json()["error"], "code": "invalid_value",
                                                "field": field}


async def test_an_agents_log_with_nul_bytes_is_kept_with_replacement_characters(tmp_path: Path,
                                                                                 store_url: str) -> None:
    """A job's output may hold NUL bytes: the events are applied (NUL as U+FFFD) on both
    databases, rather than failing the batch the agent would then resend forever."""
    async with open_inprocess(tmp_path, database_url=store_url) as co, co.client() as api:
        _agent_id, agent = await co.register_agent()
        async with agent:
            job = (await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})).json()
            claimed = await agent.post("/agent/v0/claim", headers=JSON,
                                       json={"free": {"cpus": 1, "memoryMb": 1024, "gpus": 0}, "waitSeconds": 5})
            assert claimed.status_code == 200, claimed.text
            epoch = claimed.json()["epoch"]
            events = {"events": [
                {"seq": 1, "type": "started", "jobId": job["id"], "epoch": epoch, "at": "2026-01-01T00:00:00Z"},
                {"seq": 2, "type": "log", "jobId": job["id"], "epoch": epoch, "data": "a\u0000b\udc80c\n"},
            ]}
            # json.dumps escapes the lone surrogate (httpx's own encoder cannot encode it).
            sent = await agent.post("/agent/v0/events", content=json.dumps(events), headers=JSON)
            assert sent.status_code == 200, sent.text
            assert sent.json()["appliedThrough"] == 2, sent.text
        logs = await api.get(f"/v0/jobs/{job['id']}/logs")
        assert logs.status_code == 200, logs.text
        assert logs.text == "a\ufffdb\ufffdc\n"


async def test_usage_figures_too_large_to_store_are_refused_event_by_event(tmp_path: Path, store_url: str) -> None:
    """GPU-memory GB-seconds are not bounded by the agent's capacity like the other figures; one
    of 1e300 became an integer of micro-units beyond 64 bits, a 500 on both databases that the
    agent would resend forever. It is refused by itself, and the stream goes on."""
    async with open_inprocess(tmp_path, database_url=store_url) as co, co.client() as api:
        _agent_id, agent = await co.register_agent()
        async with agent:
            job = (await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})).json()
            claimed = await agent.post("/agent/v0/claim", headers=JSON,
                                       json={"free": {"cpus": 1, "memoryMb": 1024, "gpus": 0}, "waitSeconds": 5})
            assert claimed.status_code == 200, claimed.text
            head = {"jobId": job["id"], "epoch": claimed.json()["epoch"]}
            usage = {"type": "usage", "cpuSeconds": 0.1, "gbSeconds": 0.1, "gpuSeconds": 0}
            events = {"events": [
                {"seq": 1, "type": "started", **head, "at": datetime.now(UTC).isoformat().replace("+00:00", "Z")},
                {"seq": 2, **head, **usage, "gpuMemoryGbSeconds": 1e300},
                {"seq": 3, **head, **usage, "gpuMemoryGbSeconds": 1e13},
                {"seq": 4, **head, **usage, "gpuMemoryGbSeconds": 0.5},
            ]}
            sent = await agent.post("/agent/v0/events", json=events)
            assert sent.status_code == 200, sent.text
            assert sent.json()["appliedThrough"] == 4, sent.text
            assert sorted(r["seq"] for r in sent.json()["rejected"]) == [2, 3], sent.text


LABELS = [{"gpu.model": 'A100 "80GB" \\ é 😀'}, {"team/a-b_c": "1"}, {"team/a-b_c": "1.0"},
          {"k": "true"}, {"k": "null"}, {"k": ""}]


async def test_label_filters_match_the_same_jobs_on_both_databases(tmp_path: Path, store_url: str) -> None:
    """Keys with dots, slashes and dashes; values with quotes, backslashes, non-ASCII, and text
    that looks like another JSON type: compared as exact strings on both databases."""
    async with open_inprocess(tmp_path, database_url=store_url) as co, co.client() as api:
        ids = []
        for labels in LABELS:
            created = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true", "labels": labels})
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        for index, labels in enumerate(LABELS):
            ((key, value),) = labels.items()
            found = await api.get("/v0/jobs", params={"label": f"{key}={value}"})
            assert found.status_code == 200, found.text
            assert [job["id"] for job in found.json()["items"]] == [ids[index]], (key, value)
        for absent in ("team/a-b_c=01", "k=TRUE", "gpu.model=A100", "missing=x", "k= "):
            found = await api.get("/v0/jobs", params={"label": absent})
            assert found.status_code == 200 and found.json()["items"] == [], absent
        # A lone surrogate or invalid UTF-8 in the query string is not a 500 either.
        for raw in ("/v0/jobs?label=k%3D%ED%A0%80", "/v0/jobs?label=k%3D%FF"):
            response = await api.get(raw)
            assert response.status_code in (200, 400, 422), (raw, response.text)
            if response.status_code == 200:
                assert response.json()["items"] == []


async def test_claims_match_tricky_labels_alike_on_both_databases(tmp_path: Path, store_url: str) -> None:
    """The claim's label containment (json_each on SQLite, jsonb @> on PostgreSQL) on keys with
    dots and slashes and values with quotes, backslashes and non-ASCII: exact strings."""
    agent_labels = {"gpu.model": 'A100 "80GB" \\ é 😀', "team/a-b_c": "1"}
    async with open_inprocess(tmp_path, database_url=store_url) as co, co.client() as api:
        _agent_id, agent = await co.register_agent(labels=agent_labels)
        async with agent:
            wrong = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true",
                                                     "labels": {"team/a-b_c": "1.0"}})
            right = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true", "labels": agent_labels})
            assert wrong.status_code == right.status_code == 201
            claim = {"free": {"cpus": 1, "memoryMb": 1024, "gpus": 0}, "waitSeconds": 0}
            first = await agent.post("/agent/v0/claim", headers=JSON, json=claim)
            assert first.status_code == 200 and first.json()["jobId"] == right.json()["id"], first.text
            second = await agent.post("/agent/v0/claim", headers=JSON, json=claim)
            assert second.status_code == 204, second.text


async def test_a_job_with_the_largest_labels_allowed_is_stored_on_both_databases(
        tmp_path: Path, store_url: str) -> None:
    """The labels column is in the claim index (jobs_claim_shapes), and PostgreSQL refuses a
    B-tree entry past about 2.7 KB: the selector is bounded (MAX_SELECTOR_BYTES) so the largest
    one allowed, incompressible, is stored and claimed on both databases, and one byte more is
    refused alike (it was a 503 on PostgreSQL: "index row requires 17224 bytes")."""
    labels = {f"k{n:02d}": secrets.token_urlsafe(12) for n in range(64)}
    room = MAX_SELECTOR_BYTES - len(json.dumps(labels))
    for key in labels:  # fill up to the bound, each value within its own 256 characters
        grow = min(room, 256 - len(labels[key]))
        labels[key] += "x" * grow
        room -= grow
    assert len(json.dumps(labels)) == MAX_SELECTOR_BYTES
    async with open_inprocess(tmp_path, database_url=store_url) as co, co.client() as api:
        over = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true",
                                                "labels": {**labels, "k63": labels["k63"] + "x"}})
        assert over.status_code == 422 and over.json()["error"]["field"] == "labels", over.text
        created = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true", "labels": labels})
        assert created.status_code == 201, created.text
        _agent_id, agent = await co.register_agent(labels=labels)
        async with agent:
            claimed = await agent.post("/agent/v0/claim", headers=JSON,
                                       json={"free": {"cpus": 1, "memoryMb": 1024, "gpus": 0}, "waitSeconds": 0})
            assert claimed.status_code == 200 and claimed.json()["jobId"] == created.json()["id"], claimed.text
