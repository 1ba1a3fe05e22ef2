"""Webhooks over real HTTP: a real coordinator process delivers to a real receiver on a
loopback port, which verifies every signature with ``common.signing``."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import REFERENCE_JOB, AgentProc, Coordinator, quick_ticking_coordinator, wait_for, wait_terminal
from tests.receiver import Receiver, running_receiver

JOB_EVENTS = ["job.created", "job.transitioned", "job.terminal"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as found:
        yield found


def register(api: httpx.Client, receiver: Receiver, path: str = "/hook",
             events: list[str] | None = None) -> dict[str, str]:
    created = api.post("/v0/webhooks", json={"url": receiver.url + path, "events": events or JOB_EVENTS})
    assert created.status_code == 201, created.text
    body: dict[str, str] = created.json()
    receiver.secrets.append(body["secret"])
    return body


def test_registration_and_refusals(coordinator: Coordinator) -> None:
    with coordinator.client() as api:
        refused = api.post("/v0/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["job.created"]})
        assert refused.status_code == 422
        error = refused.json()["error"]
        assert error["field"] == "url" and error["code"] == "invalid_value"
        assert error["message"] == ("url host '127.0.0.1' resolves to 127.0.0.1, a loopback address; a coordinator "
                                    "started with --allow-private-webhooks (or webhooks.allow_private) accepts it")
        for url in ("ftp://93.184.216.34/x", "http://169.254.169.254/latest/meta-data", "http://10.0.0.8/",
                    "http://[fe80::1]/"):
            response = api.post("/v0/webhooks", json={"url": url, "events": ["job.created"]})
            assert response.status_code == 422 and response.json()["error"]["field"] == "url", url
        bad_event = api.post("/v0/webhooks", json={"url": "https://93.184.216.34/x", "events": ["job.exploded"]})
        assert bad_event.status_code == 422 and bad_event.json()["error"]["field"] == "events.0"
        assert api.post("/v0/webhooks", json={"events": ["job.created"]}).json()["error"]["code"] == "missing_field"

        created = api.post("/v0/webhooks", json={"url": "https://93.184.216.34/x",
                                                 "events": ["billing.soft_cap_reached"]})
        assert created.status_code == 201
        hook = created.json()
        assert hook["id"].startswith("whk_") and hook["secret"].startswith("whsec_")
        assert hook["events"] == ["billing.soft_cap_reached"] and hook["createdAt"].endswith("Z")
        listed = api.get("/v0/webhooks").json()
        assert listed == {"items": [{k: v for k, v in hook.items() if k != "secret"}], "nextCursor": None}
        assert api.get(f"/v0/webhooks/{hook['id']}/deliveries").json() == {"items": [], "nextCursor": None}
        rotated = api.post(f"/v0/webhooks/{hook['id']}:rotate-secret").json()
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != hook["secret"]
        assert api.delete(f"/v0/webhooks/{hook['id']}").status_code == 204
        assert api.delete(f"/v0/webhooks/{hook['id']}").json()["error"]["code"] == "webhook_not_found"
        assert api.post(f"/v0/webhooks/{hook['id']}:rotate-secret").status_code == 404
        assert api.get("/v0/webhooks").json()["items"] == []
        paths = api.get("/v0/openapi.json").json()["paths"]
        assert {"/v0/webhooks", "/v0/webhooks/{webhook_id}", "/v0/webhooks/{webhook_id}:rotate-secret",
                "/v0/webhooks/{webhook_id}/deliveries", "/v0/billing/usage", "/v0/billing/invoices",
                "/v0/billing/limits"} <= set(paths)


def test_signed_events_arrive_in_order_through_failures(fast: Coordinator, receiver: Receiver,
                                                        tmp_path: Path) -> None:
    receiver.fail_first = 2
    agent = AgentProc(fast, tmp_path / "agent", labels=("arch=arm64",)).start()
    try:
        with fast.client() as api:
            hook = register(api, receiver)
            job_id = api.post("/v0/jobs", json=REFERENCE_JOB).json()["id"]
            job = wait_terminal(api, job_id)
            wait_for(lambda: any(r.event["type"] == "job.terminal" for r in receiver.delivered()),
                     message="job.terminal delivered")
            delivered = receiver.delivered()
            assert receiver.bad_signatures == []
            assert [r.event["type"] for r in delivered] == ["job.created"] + ["job.transitioned"] * 3 + ["job.terminal"]
            assert [r.event["data"]["state"] for r in delivered] == ["QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED",
                                                                     "SUCCEEDED"]
            assert all(r.event["data"]["id"] == job_id for r in delivered)
            # The payload is the job as GET /v0/jobs/{id} shows it.
            final = {k: v for k, v in delivered[-1].event["data"].items() if k != "usage"}
            assert final == {k: v for k, v in job.items() if k != "usage"}
            # The first event was refused twice, then accepted: the same event id every time.
            tries = [r for r in receiver.requests if r.event["type"] == "job.created"]
            assert [r.status for r in tries] == [500, 500, 204] and len({r.event_id for r in tries}) == 1

            # The receiver sees a delivery before the coordinator records its outcome: wait for the record.
            attempts = wait_for(
                lambda: (items := api.get(f"/v0/webhooks/{hook['id']}/deliveries",
                                          params={"limit": 100}).json()["items"]) and len(items) >= 7 and items,
                message="seven delivery attempts recorded")
            assert len(attempts) == 7
            failed = [a for a in attempts if a["statusCode"] == 500]
            assert len(failed) == 2
            assert all(a["error"] == "the receiver answered HTTP 500" and a["eventType"] == "job.created"
                       and a["deliveryState"] == "delivered" and isinstance(a["latencyMs"], int) for a in failed)
            assert attempts[0]["statusCode"] == 204 and attempts[0]["eventType"] == "job.terminal"
            assert attempts[0]["error"] is None
            page = api.get(f"/v0/webhooks/{hook['id']}/deliveries", params={"limit": 4}).json()
            rest = api.get(f"/v0/webhooks/{hook['id']}/deliveries", params={"cursor": page["nextCursor"]}).json()
            assert [a["id"] for a in page["items"] + rest["items"]] == [a["id"] for a in attempts]
    finally:
        agent.stop()


def test_rotation_signs_with_old_and_new_secret(fast: Coordinator, receiver: Receiver) -> None:
    with fast.client() as api:
        hook = register(api, receiver, events=["job.created"])
        api.post("/v0/jobs", json=REFERENCE_JOB)
        wait_for(lambda: len(receiver.delivered()) == 1, message="first delivery")
        rotated = api.post(f"/v0/webhooks/{hook['id']}:rotate-secret")
        assert rotated.status_code == 200
        body = rotated.json()
        receiver.secrets.append(body["secret"])
        expires = body["previousSecretExpiresAt"]
        assert expires.endswith("Z")
        api.post("/v0/jobs", json=REFERENCE_JOB)
        wait_for(lambda: len(receiver.delivered()) == 2, message="second delivery")
        first, second = receiver.delivered()
        assert (first.signatures, first.valid_for) == (1, [hook["secret"]])
        assert (second.signatures, second.valid_for) == (2, [hook["secret"], body["secret"]])
        assert receiver.bad_signatures == []


def test_sigkill_with_pending_deliveries_loses_none_and_sends_none_extra(tmp_path: Path, receiver: Receiver) -> None:
    coord = quick_ticking_coordinator(tmp_path).start()
    try:
        receiver.status = 503
        with coord.client() as api:
            kept = register(api, receiver, "/hook")
            dropped = register(api, receiver, "/dropped")
            jobs = [api.post("/v0/jobs", json={**REFERENCE_JOB, "labels": {"pool": "none"}}).json()["id"]
                    for _ in range(3)]
            api.post(f"/v0/jobs/{jobs[0]}:cancel")
            wait_for(lambda: receiver.count("/hook") >= 3 and receiver.count("/dropped") >= 1,
                     message="failed attempts")
            assert api.delete(f"/v0/webhooks/{dropped['id']}").status_code == 204
        coord.stop(signal.SIGKILL)
        dropped_before = receiver.count("/dropped")
        receiver.status = 204
        coord.start()
        expected = {(job, "job.created") for job in jobs} | {(jobs[0], "job.transitioned"),
                                                             (jobs[0], "job.terminal")}
        wait_for(lambda: len(receiver.delivered("/hook")) == len(expected), message="all events after restart")
        delivered = receiver.delivered("/hook")
        assert {(r.event["data"]["id"], r.event["type"]) for r in delivered} == expected
        assert [r.event["type"] for r in delivered if r.event["data"]["id"] == jobs[0]] == JOB_EVENTS
        with coord.client() as api:
            # Each event was accepted once and its delivery is closed, so nothing is left to re-send.
            attempts = wait_for(
                lambda: (items := api.get(f"/v0/webhooks/{kept['id']}/deliveries",
                                          params={"limit": 500}).json()["items"])
                and sum(1 for a in items if a["statusCode"] == 204) >= len(expected) and items,
                message="every accepted delivery recorded")
            assert sum(1 for a in attempts if a["statusCode"] == 204) == len(expected)
            assert {a["deliveryState"] for a in attempts} == {"delivered"}
        assert receiver.count("/dropped") == dropped_before
        assert receiver.bad_signatures == []
    finally:
        coord.stop()
