"""The whole path with real processes: submit over HTTP, an agent claims and runs, results come back."""

from __future__ import annotations

import json
import signal

import httpx

from tests.procs import REFERENCE_JOB, AgentProc, Coordinator, wait_terminal


def test_reference_example_runs_to_success(coordinator: Coordinator, agent: AgentProc) -> None:
    with coordinator.client() as api:
        created = api.post("/v0/jobs", json=REFERENCE_JOB, headers={"X-Compute-API-Version": "v0"})
        assert created.status_code == 201
        body = created.json()
        assert set(body) == {"id", "state", "createdAt"}
        assert body["state"] == "QUEUED"
        assert body["id"].startswith("job_") and len(body["id"]) == 4 + 26
        assert body["createdAt"].endswith("Z")
        assert created.headers["X-Compute-API-Version"] == "v0"
        assert created.headers["X-Request-Id"].startswith("req_")

        job = wait_terminal(api, body["id"])
        assert job["state"] == "SUCCEEDED"
        assert job["exitCode"] == 0
        assert isinstance(job["runtimeMs"], int) and job["runtimeMs"] >= 0
        assert job["agentId"] == agent.agent_id
        assert job["startedAt"] is not None and job["finishedAt"] is not None

        logs = api.get(f"/v0/jobs/{body['id']}/logs")
        assert logs.status_code == 200
        assert logs.headers["content-type"].startswith("text/plain")
        assert logs.text == "hello\n"


def test_failing_command_reports_its_exit_code(coordinator: Coordinator, agent: AgentProc) -> None:
    with coordinator.client() as api:
        job_id = api.post("/v0/jobs", json={"type": "COMMAND", "command": "echo oops >&2; exit 3",
                                            "labels": {"arch": "arm64"}}).json()["id"]
        job = wait_terminal(api, job_id)
        assert job["state"] == "FAILED"
        assert job["exitCode"] == 3
        assert api.get(f"/v0/jobs/{job_id}/logs").text == "oops\n"


def test_job_matching_no_agent_stays_queued(coordinator: Coordinator, agent: AgentProc) -> None:
    with coordinator.client() as api:
        job_id = api.post("/v0/jobs", json={"type": "COMMAND", "command": "true",
                                            "labels": {"arch": "s390x"}}).json()["id"]
        # A job the agent does match runs and finishes, proving the agent has looked at the queue.
        other = api.post("/v0/jobs", json=REFERENCE_JOB).json()["id"]
        assert wait_terminal(api, other)["state"] == "SUCCEEDED"
        assert api.get(f"/v0/jobs/{job_id}").json()["state"] == "QUEUED"


def test_restart_keeps_every_acknowledged_job(coordinator: Coordinator) -> None:
    with coordinator.client() as api:
        ids = [api.post("/v0/jobs", json=REFERENCE_JOB).json()["id"] for _ in range(5)]
    assert coordinator.stop(signal.SIGTERM) == 0
    coordinator.start()
    with coordinator.client() as api:
        for job_id in ids:
            job = api.get(f"/v0/jobs/{job_id}").json()
            assert job["id"] == job_id
            assert job["state"] == "QUEUED"


def test_sigkill_right_after_201_loses_nothing(coordinator: Coordinator) -> None:
    with coordinator.client() as api:
        job_id = api.post("/v0/jobs", json=REFERENCE_JOB).json()["id"]
    coordinator.stop(signal.SIGKILL)
    coordinator.start()
    with coordinator.client() as api:
        assert api.get(f"/v0/jobs/{job_id}").json()["state"] == "QUEUED"


def test_log_follow_streams_until_end(coordinator: Coordinator, agent: AgentProc) -> None:
    with coordinator.client() as api:
        job_id = api.post("/v0/jobs", json={"type": "COMMAND", "command": "printf 'a\\r\\n'; echo b",
                                            "labels": {"arch": "arm64"}}).json()["id"]
        events = []
        with api.stream("GET", f"/v0/jobs/{job_id}/logs", params={"follow": "true"},
                        timeout=httpx.Timeout(10, read=30)) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            block: dict[str, str] = {}
            for line in stream.iter_lines():
                if not line:
                    if block:
                        events.append(block)
                    if block.get("event") == "end":
                        break
                    block = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    block[key] = value
        text = "".join(json.loads(e["data"]) for e in events if e["event"] == "log")
        assert text == "a\r\nb\n"
        end = events[-1]
        assert end["event"] == "end"
        assert json.loads(end["data"]) == {"state": "SUCCEEDED", "exitCode": 0}
        assert int(end["id"]) == len(text.encode())
