"""``/v0/agents`` delete, ``/v0/registration-tokens``, and the held heartbeat, over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
import trio.testing

from common.protocol import CapacityMsg, ClaimRequest, HeartbeatRequest, RegisterRequest, RunningJob
from common.states import AgentState
from tests.inproc import InProcess, open_inprocess

FREE = CapacityMsg(cpus=4, memoryMb=8192, gpus=0)


def _json(model: object) -> dict[str, str]:
    return {"content": model.model_dump_json(), "headers": {"Content-Type": "application/json"}}  # type: ignore[attr-defined]


async def _claim(agent: httpx.AsyncClient) -> dict[str, object]:
    response = await agent.post("/agent/v0/claim", **_json(ClaimRequest(free=FREE, waitSeconds=5)))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def _submit(api: httpx.AsyncClient, command: str = "sleep 60") -> str:
    response = await api.post("/v0/jobs", json={"type": "COMMAND", "command": command})
    assert response.status_code == 201
    return str(response.json()["id"])


async def test_delete_agent_is_admin_only_busy_unless_forced_and_revokes_its_token(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as owner:
        member = await co.add_member("member")
        admin = await co.add_member("admin")
        agent_id, agent = await co.register_agent()
        async with agent, co.client(member) as as_member, co.client(admin) as as_admin:
            job_id = await _submit(owner)
            assert (await _claim(agent))["jobId"] == job_id

            denied = await as_member.delete(f"/v0/agents/{agent_id}")
            assert denied.status_code == 403
            assert denied.json()["error"]["code"] == "insufficient_role"

            busy = await as_admin.delete(f"/v0/agents/{agent_id}")
            assert busy.status_code == 409
            assert busy.json()["error"]["code"] == "agent_busy"

            bad = await as_admin.delete(f"/v0/agents/{agent_id}", params={"force": "maybe"})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "force"

            gone = await as_admin.delete(f"/v0/agents/{agent_id}", params={"force": "true"})
            assert gone.status_code == 204 and gone.content == b""
            # ASSIGNED when deleted: handed back to the queue for another agent.
            job = (await owner.get(f"/v0/jobs/{job_id}")).json()
            assert (job["state"], job["agentId"]) == ("QUEUED", None)

            assert (await owner.get(f"/v0/agents/{agent_id}")).status_code == 404
            assert agent_id not in [a["id"] for a in (await owner.get("/v0/agents")).json()["items"]]
            again = await as_admin.delete(f"/v0/agents/{agent_id}")
            assert again.status_code == 404 and again.json()["error"]["code"] == "agent_not_found"

            # Its token is revoked: every protocol call is refused.
            beat = await agent.post("/agent/v0/heartbeat", **_json(HeartbeatRequest(state=AgentState.READY)))
            assert beat.status_code == 401 and beat.json()["error"]["code"] == "invalid_token"


async def test_delete_idle_agent_without_force(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as owner:
        agent_id, agent = await co.register_agent()
        async with agent:
            assert (await owner.delete(f"/v0/agents/{agent_id}")).status_code == 204
            claim = await agent.post("/agent/v0/claim", **_json(ClaimRequest(free=FREE, waitSeconds=0)))
            assert claim.status_code == 401


async def test_deleting_an_agent_ends_its_held_heartbeat(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as owner:
        agent_id, agent = await co.register_agent()
        async with agent, trio.open_nursery() as nursery:
            answers: list[httpx.Response] = []
            answered = trio.Event()

            async def hold() -> None:
                answers.append(await agent.post("/agent/v0/heartbeat", **_json(
                    HeartbeatRequest(state=AgentState.READY, waitSeconds=60))))
                answered.set()

            nursery.start_soon(hold)
            await _held()
            with trio.fail_after(30):
                assert (await owner.delete(f"/v0/agents/{agent_id}")).status_code == 204
                await answered.wait()
        assert answers[0].status_code == 401


async def _held() -> None:
    """Return once every task of this trio run (client, Hypercorn, handlers) is blocked: the
    heartbeat request has reached its handler and waits there."""
    with trio.fail_after(30):
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)


async def _registration(co: InProcess, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=co.url, headers={"Authorization": f"Bearer {token}"}) as anonymous:
        return await anonymous.post("/agent/v0/register", **_json(
            RegisterRequest(name="a", labels={}, capacity=FREE, version="t")))


async def test_registration_tokens_create_list_revoke(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as owner:
        member = await co.add_member("member")
        async with co.client(member) as as_member:
            assert (await as_member.get("/v0/registration-tokens")).status_code == 403
            assert (await as_member.post("/v0/registration-tokens", json={})).status_code == 403

            created = await owner.post("/v0/registration-tokens", json={"name": "rack 7"})
            assert created.status_code == 201
            body = created.json()
            assert set(body) == {"id", "name", "createdAt", "expiresAt", "revokedAt", "token"}
            assert body["token"].startswith("tcp_reg_") and body["name"] == "rack 7"
            assert (await _registration(co, body["token"])).status_code == 201

            listed = (await owner.get("/v0/registration-tokens")).json()
            assert listed["items"][0]["id"] == body["id"]
            assert len(listed["items"]) == 2  # plus the one made by init
            assert all("token" not in t for t in listed["items"])
            paged = (await owner.get("/v0/registration-tokens", params={"limit": 1})).json()
            assert len(paged["items"]) == 1 and paged["nextCursor"]
            rest = (await owner.get("/v0/registration-tokens", params={"cursor": paged["nextCursor"]})).json()
            assert [t["id"] for t in rest["items"]] == [listed["items"][1]["id"]]

            assert (await as_member.delete(f"/v0/registration-tokens/{body['id']}")).status_code == 403
            assert (await owner.delete(f"/v0/registration-tokens/{body['id']}")).status_code == 204
            assert (await owner.delete(f"/v0/registration-tokens/{body['id']}")).status_code == 204  # idempotent
            refused = await _registration(co, body["token"])
            assert refused.status_code == 401
            listed = (await owner.get("/v0/registration-tokens")).json()
            assert listed["items"][0]["revokedAt"] is not None
            assert (await owner.delete("/v0/registration-tokens/tok_nope")).status_code == 404


async def test_registration_token_validation(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as owner:
        past = await owner.post("/v0/registration-tokens", json={"expiresAt": "2001-01-01T00:00:00Z"})
        assert past.status_code == 422 and past.json()["error"]["field"] == "expiresAt"
        garbled = await owner.post("/v0/registration-tokens", json={"expiresAt": "soon"})
        assert garbled.status_code == 422
        unknown = await owner.post("/v0/registration-tokens", json={"nmae": "x"})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_field"
        future = await owner.post("/v0/registration-tokens", json={"expiresAt": "2999-01-01T00:00:00Z"})
        assert future.status_code == 201 and future.json()["expiresAt"] == "2999-01-01T00:00:00.000Z"


async def test_held_heartbeat_returns_at_once_with_a_cancel(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as owner:
        _agent_id, agent = await co.register_agent()
        async with agent:
            job_id = await _submit(owner)
            epoch = (await _claim(agent))["epoch"]
            assert isinstance(epoch, int)
            beat = HeartbeatRequest(state=AgentState.READY, runningJobs=[RunningJob(jobId=job_id, epoch=epoch)],
                                    waitSeconds=60)
            answers: list[dict[str, object]] = []
            answered = trio.Event()
            async with trio.open_nursery() as nursery:

                async def hold() -> None:
                    response = await agent.post("/agent/v0/heartbeat", **_json(beat))
                    answers.append(response.json())
                    answered.set()

                nursery.start_soon(hold)
                await _held()
                started = trio.current_time()
                cancelled = await owner.post(f"/v0/jobs/{job_id}:cancel")
                # ASSIGNED: cancelled at once, and the agent (which may have started it) is told.
                assert cancelled.json()["state"] == "CANCELLED"
                await answered.wait()
                # Woken by the cancel, far inside the 60 s hold.
                assert trio.current_time() - started < 30
            assert answers[0]["cancelJobs"] == [job_id]
            # Heard already: the next held beat does not return early with the same order.
            with trio.move_on_after(0.5) as held:
                await agent.post("/agent/v0/heartbeat", **_json(beat))
            assert held.cancelled_caught


async def test_held_heartbeat_returns_at_once_with_a_drain_order(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as owner:
        agent_id, agent = await co.register_agent()
        async with agent, trio.open_nursery() as nursery:
            answers: list[dict[str, object]] = []
            answered = trio.Event()

            async def hold() -> None:
                response = await agent.post("/agent/v0/heartbeat", **_json(
                    HeartbeatRequest(state=AgentState.READY, waitSeconds=60)))
                answers.append(response.json())
                answered.set()

            nursery.start_soon(hold)
            await _held()
            assert (await owner.post(f"/v0/agents/{agent_id}:drain")).status_code == 200
            await answered.wait()
            assert answers[0]["drain"] is True
            # Reporting DRAINED (it heard the order): no news, so a short hold runs out.
            quiet = await agent.post("/agent/v0/heartbeat", **_json(
                HeartbeatRequest(state=AgentState.DRAINED, waitSeconds=0.2)))
            assert quiet.json()["drain"] is True
