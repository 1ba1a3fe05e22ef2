"""``/metrics``: Prometheus text parsed by prometheus_client's own parser; the optional token;
request ids in the JSON-lines request log."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.inproc import running_coordinator
from tests.procs import Coordinator, wait_for

AGENT = {"name": "a", "labels": {}, "capacity": {"cpus": 1, "memoryMb": 512, "gpus": 0}, "version": "t"}
CLAIM = {"free": {"cpus": 1, "memoryMb": 512, "gpus": 0}, "waitSeconds": 5}


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matches = [value for got, value in samples.get(name, []) if all(got.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return matches[0]


async def test_metrics_exposition(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as api:
        for _ in range(3):
            assert (await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})).status_code == 201
        assert (await api.get("/v0/jobs/job_00000000000000000000000000")).status_code == 404
        async with coord.client(coord.init.registration_token) as registrar:
            agent_token = (await registrar.post("/agent/v0/register", json=AGENT)).json()["agentToken"]
        coord.clock.advance(2.5)
        async with coord.client(agent_token) as agent:
            assert (await agent.post("/agent/v0/claim", json=CLAIM)).status_code == 200
        async with httpx.AsyncClient(base_url=coord.url) as anonymous:
            response = await anonymous.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = _samples(response.text)
        assert _value(samples, "tanvrit_http_requests_total", route="/v0/jobs", method="POST", status="201") == 3
        assert _value(samples, "tanvrit_http_requests_total", route="/v0/jobs/<job_id>", method="GET",
                      status="404") == 1
        assert _value(samples, "tanvrit_http_request_duration_seconds_count", route="/v0/jobs", method="POST") == 3
        assert _value(samples, "tanvrit_jobs", state="QUEUED") == 2
        assert _value(samples, "tanvrit_jobs", state="ASSIGNED") == 1
        assert _value(samples, "tanvrit_jobs", state="SUCCEEDED") == 0
        assert _value(samples, "tanvrit_queue_depth") == 2
        assert _value(samples, "tanvrit_agents", state="READY") == 1
        assert _value(samples, "tanvrit_job_dispatch_latency_seconds_count") == 1
        assert _value(samples, "tanvrit_job_dispatch_latency_seconds_sum") == 2.5  # on the injected clock
        assert _value(samples, "tanvrit_job_dispatch_latency_seconds_bucket", le="2.5") == 1
        assert _value(samples, "tanvrit_job_dispatch_latency_seconds_bucket", le="1.0") == 0


async def test_metrics_token(tmp_path: Path) -> None:
    secret = "m" * 32
    async with running_coordinator(tmp_path, metrics_token=secret) as coord, \
            httpx.AsyncClient(base_url=coord.url) as anonymous:
        refused = await anonymous.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"
        wrong = await anonymous.get("/metrics", headers={"Authorization": "Bearer " + "x" * 32})
        assert wrong.status_code == 401
        allowed = await anonymous.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
        assert allowed.status_code == 200
        assert "tanvrit_http_requests_total" in allowed.text


def test_request_log_lines_carry_the_request_id(tmp_path: Path) -> None:
    coord = Coordinator(tmp_path / "coordinator", extra_args=("--log-json",)).start()
    try:
        with coord.client() as api:
            response = api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})
        request_id = response.headers["X-Request-Id"]

        def logged() -> dict[str, object] | None:
            for line in coord.log().splitlines():
                if request_id in line:
                    entry: dict[str, object] = json.loads(line)
                    return entry
            return None

        entry = wait_for(logged, message="the request's log line")
        assert entry["request_id"] == request_id
        assert entry["event"] == "request" and entry["status"] == 201 and entry["path"] == "/v0/jobs"
        assert coord.token not in coord.log()  # no secrets in logs
    finally:
        coord.stop()
