"""Claims filter in the query (issue 16): no starvation behind jobs the agent cannot run, and
priorities (higher first, oldest first within one). The real SQLite store, in-process."""

from __future__ import annotations

from pathlib import Path

from common.protocol import CapacityMsg, ClaimRequest
from common.states import AgentState, JobState
from coordinator.store.base import AgentRecord, JobRecord, TokenRecord
from coordinator.store.sqlite import SqliteStore, open_sqlite_store
from tests.inproc import open_inprocess

FREE = CapacityMsg(cpus=4, memoryMb=8192, gpus=0)


async def _setup(store: SqliteStore, labels: dict[str, str] | None = None) -> None:
    await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                          tokens=[], now=0)
    await store.register_agent(
        AgentRecord(id="agt_1", workspace_id="ws_1", name="a", state=AgentState.READY, labels=labels or {"pool": "a"},
                    capacity=FREE.model_dump(), version="t", registered_at=0),
        TokenRecord(id="tok_a", kind="agent", token_hash="ha", workspace_id="ws_1", user_id=None,
                    agent_id="agt_1", name="a", created_at=0),
    )


def _job(job_id: str, created: int, *, labels: dict[str, str] | None = None,
         resources: dict[str, object] | None = None, priority: int = 50) -> JobRecord:
    return JobRecord(id=job_id, workspace_id="ws_1", state=JobState.QUEUED, command="true", name=None,
                     labels=labels or {}, resources=resources, env={}, timeout_seconds=60, created_at=created,
                     priority=priority)


async def test_an_idle_agent_claims_the_placeable_job_behind_300_it_cannot_run(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "db") as store:
        await _setup(store)
        # Older than the placeable job, each unplaceable for one reason: a pool with no agent,
        # more CPUs, memory or GPUs than the agent has free, or a GPU taken from the defaults.
        unplaceable: list[dict[str, object]] = [
            {"labels": {"pool": "b"}}, {"labels": {"pool": "a", "zone": "x"}}, {"resources": {"cpus": 8}},
            {"resources": {"memoryMb": 9000}}, {"resources": {"gpus": 1}},
        ]
        for index in range(300):
            await store.insert_job(_job(f"job_{index:04d}", index, **unplaceable[index % 5]))  # type: ignore[arg-type]
        await store.insert_job(_job("job_fits", 1000, labels={"pool": "a"}, resources={"cpus": 4}))
        assignment = await store.claim_job("agt_1", FREE, None, 2000)
        assert assignment is not None and assignment.jobId == "job_fits"
        # Nothing else fits; the others stay QUEUED.
        assert await store.claim_job("agt_1", FREE, None, 2001) is None
        assert (await store.get_job("ws_1", "job_0000")).state == JobState.QUEUED  # type: ignore[union-attr]


async def test_many_distinct_selectors_ahead_do_not_starve_the_job_behind(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "db") as store:
        await _setup(store)
        for index in range(300):  # each its own selector, none of them the agent's
            await store.insert_job(_job(f"job_{index:04d}", index, labels={"pool": "b", "run": str(index)}))
        await store.insert_job(_job("job_fits", 1000, priority=0))
        assignment = await store.claim_job("agt_1", FREE, None, 2000)
        assert assignment is not None and assignment.jobId == "job_fits"


async def test_selector_keys_with_dots_and_slashes_match_exactly(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "db") as store:
        await _setup(store, labels={"team.example/pool": "a", "pool": "a"})
        await store.insert_job(_job("job_other_value", 1, labels={"team.example/pool": "b"}))
        await store.insert_job(_job("job_missing_key", 2, labels={"team.example/zone": "a"}))
        await store.insert_job(_job("job_match", 3, labels={"team.example/pool": "a", "pool": "a"}))
        assignment = await store.claim_job("agt_1", FREE, None, 10)
        assert assignment is not None and assignment.jobId == "job_match"
        assert await store.claim_job("agt_1", FREE, None, 11) is None


async def test_absent_resources_are_taken_from_the_agents_defaults(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "db") as store:
        await _setup(store)
        await store.insert_job(_job("job_default", 1))
        big_default = CapacityMsg(cpus=8, memoryMb=1, gpus=0)
        assert await store.claim_job("agt_1", FREE, big_default, 2) is None
        small_default = CapacityMsg(cpus=1, memoryMb=1, gpus=0)
        assignment = await store.claim_job("agt_1", FREE, small_default, 3)
        assert assignment is not None and assignment.jobId == "job_default" and assignment.cpus == 1


async def test_higher_priority_first_then_oldest_within_a_priority(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "db") as store:
        await _setup(store)
        # Different selectors and resources, so the order holds across placement shapes too.
        for job_id, created, priority, labels, resources in [
            ("job_low", 1, 10, None, None), ("job_mid_old", 2, 50, {"pool": "a"}, None),
            ("job_high", 5, 90, None, {"cpus": 1}), ("job_mid_new", 3, 50, None, None),
            ("job_mid_newest", 4, 50, {"pool": "a"}, None), ("job_top_unplaceable", 0, 100, {"pool": "b"}, None),
        ]:
            await store.insert_job(_job(job_id, created, priority=priority, labels=labels, resources=resources))
        order = []
        while (assignment := await store.claim_job("agt_1", FREE, None, 10)) is not None:
            order.append(assignment.jobId)
        assert order == ["job_high", "job_mid_old", "job_mid_new", "job_mid_newest", "job_low"]
        job = await store.get_job("ws_1", "job_high")
        assert job is not None and job.priority == 90


# --- through the API ---------------------------------------------------------------------------

def _body(**fields: object) -> dict[str, object]:
    return {"type": "COMMAND", "command": "true", **fields}


async def test_members_submit_up_to_the_workspace_maximum_admins_set(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as owner:
        member_token = await co.add_member("member")
        admin_token = await co.add_member("admin")
        async with co.client(member_token) as member, co.client(admin_token) as admin:
            workspace = f"/v0/workspaces/{co.workspace_id}"
            assert (await owner.get(workspace)).json()["maxMemberPriority"] == 50
            default = await member.post("/v0/jobs", json=_body())
            assert (await member.get(f"/v0/jobs/{default.json()['id']}")).json()["priority"] == 50

            above = await member.post("/v0/jobs", json=_body(priority=51))
            assert above.status_code == 403
            assert above.json()["error"]["code"] == "priority_above_member_maximum"
            assert above.json()["error"]["field"] == "priority"
            # Admins and owners are not limited.
            for api in (admin, owner):
                top = await api.post("/v0/jobs", json=_body(priority=100))
                assert top.status_code == 201, top.text
                assert (await api.get(f"/v0/jobs/{top.json()['id']}")).json()["priority"] == 100

            # Only an admin may raise the maximum; then the member may use it.
            refused = await member.patch(workspace, json={"maxMemberPriority": 80})
            assert refused.status_code == 403
            raised = await admin.patch(workspace, json={"maxMemberPriority": 80})
            assert raised.status_code == 200 and raised.json()["maxMemberPriority"] == 80
            assert (await member.post("/v0/jobs", json=_body(priority=80))).status_code == 201
            assert (await member.post("/v0/jobs", json=_body(priority=81))).status_code == 403

            # Out of range is 422; not an integer at all is 400 invalid_type (docs/api.md).
            for bad, status in ((-1, 422), (101, 422), ("high", 400), (None, 400)):
                invalid = await owner.post("/v0/jobs", json=_body(priority=bad))
                assert (invalid.status_code, invalid.json()["error"]["field"]) == (status, "priority"), invalid.text
            for bad in (101, -1, None):
                invalid = await admin.patch(workspace, json={"maxMemberPriority": bad})
                assert invalid.status_code in (400, 422), invalid.text
                assert invalid.json()["error"]["field"] == "maxMemberPriority"


async def test_claims_over_http_take_higher_priority_first(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as owner:
        submitted = {}
        for name, priority in [("low", 10), ("default", 50), ("urgent", 95), ("default2", 50)]:
            response = await owner.post("/v0/jobs", json=_body(name=name, priority=priority))
            assert response.status_code == 201, response.text
            submitted[response.json()["id"]] = name
        _, agent = await co.register_agent()
        async with agent:
            order = []
            for _ in submitted:
                claim = await agent.post("/agent/v0/claim", content=ClaimRequest(free=FREE, waitSeconds=5)
                                         .model_dump_json(), headers={"Content-Type": "application/json"})
                assert claim.status_code == 200, claim.text
                order.append(submitted[claim.json()["jobId"]])
        assert order == ["urgent", "default", "default2", "low"]
