"""Job arrays (issue 16) through the API of an in-process coordinator: one request submits the
array, its summary counts tasks by state, claims never exceed maxParallel, cancel and logs work
on the array or one task, bounds are refused with the error envelope. Agents are simulated at
the store's claim and event calls (tests/test_arrays_e2e.py runs real agents)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from common.models import MAX_ARRAY_COUNT, MAX_ARRAY_MANIFEST_BYTES
from common.protocol import MAX_CLAIM_WAIT_SECONDS, CapacityMsg, ClaimRequest, FinishedEvent, LogEvent, StartedEvent
from common.states import JobState
from tests.inproc import InProcess, open_inprocess

FREE = CapacityMsg(cpus=64, memoryMb=65536, gpus=0)
MANIFEST = {"type": "COMMAND", "command": "echo task $TANVRIT_ARRAY_INDEX", "env": {"GREETING": "hi"}}


async def _submit_array(api: httpx.AsyncClient, count: int, max_parallel: int | None = None,
                        **extra: Any) -> dict[str, Any]:
    array: dict[str, int] = {"count": count}
    if max_parallel is not None:
        array["maxParallel"] = max_parallel
    created = await api.post("/v0/jobs", json={**MANIFEST, "array": array, **extra})
    assert created.status_code == 201, created.text
    return dict(created.json())


async def _tasks(api: httpx.AsyncClient, array_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"arrayId": array_id, "limit": 500, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v0/jobs", params=params)).json()
        found += page["items"]
        cursor = page["nextCursor"]
        if cursor is None:
            return found


class _Agent:
    """A simulated agent: claims through the store, reports started/log/finished as events."""

    def __init__(self, co: InProcess, agent_id: str) -> None:
        self.co = co
        self.agent_id = agent_id
        self.seq = 0

    async def claim(self) -> tuple[str, int, dict[str, str]] | None:
        assignment = await self.co.store.claim_job(self.agent_id, FREE, None, _now())
        return None if assignment is None else (assignment.jobId, assignment.epoch, assignment.env)

    async def finish(self, job_id: str, epoch: int, output: str = "") -> None:
        at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        events: list[Any] = [StartedEvent(seq=self._next(), jobId=job_id, epoch=epoch, at=at)]
        if output:
            events.append(LogEvent(seq=self._next(), jobId=job_id, epoch=epoch, data=output))
        events.append(FinishedEvent(seq=self._next(), jobId=job_id, epoch=epoch, at=at, state=JobState.SUCCEEDED,
                                    exitCode=0, runtimeMs=0))
        response = await self.co.store.apply_events(self.agent_id, events, _now())
        assert response.rejected == [], response.rejected

    def _next(self) -> int:
        self.seq += 1
        return self.seq


def _now() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


async def _agent(co: InProcess, name: str = "sim") -> _Agent:
    agent_id, client = await co.register_agent(name=name, cpus=64, memory_mb=65536)
    await client.aclose()
    return _Agent(co, agent_id)


async def test_an_array_is_one_request_with_indexed_tasks_and_a_summary(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        array = await _submit_array(api, 5, 2, name="sweep")
        assert array["id"].startswith("arr_") and array["state"] == "QUEUED"
        assert (array["count"], array["maxParallel"], array["name"]) == (5, 2, "sweep")
        assert array["summary"]["QUEUED"] == 5 and array["summary"]["RUNNING"] == 0
        tasks = sorted(await _tasks(api, array["id"]), key=lambda task: task["arrayIndex"])
        assert [task["arrayIndex"] for task in tasks] == [0, 1, 2, 3, 4]
        for task in tasks:
            assert task["arrayId"] == array["id"] and task["name"] == "sweep"
            assert task["env"] == {"GREETING": "hi", "TANVRIT_ARRAY_ID": array["id"],
                                   "TANVRIT_ARRAY_INDEX": str(task["arrayIndex"]), "TANVRIT_ARRAY_COUNT": "5"}
        # Task ids sort in index order, so oldest-first dispatch runs them in order.
        assert [task["id"] for task in tasks] == sorted(task["id"] for task in tasks)
        listed = (await api.get("/v0/arrays")).json()["items"]
        assert [item["id"] for item in listed] == [array["id"]]
        assert (await api.get(f"/v0/arrays/{array['id']}")).json() == array


async def test_claims_never_exceed_max_parallel_and_the_summary_follows(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        array = await _submit_array(api, 7, 3)
        single = (await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})).json()["id"]
        agent = await _agent(co)
        claimed = [await agent.claim() for _ in range(5)]
        # Three tasks (in index order), then the single job; the array is full, nothing else.
        held = [c for c in claimed if c is not None]
        assert [env.get("TANVRIT_ARRAY_INDEX") for _, _, env in held] == ["0", "1", "2", None]
        assert held[3][0] == single and claimed[4] is None
        # The queued tasks say why they wait, and where they stand; the single job is not held.
        waiting = [t for t in await _tasks(api, array["id"]) if t["state"] == "QUEUED"]
        assert {t["reason"] for t in waiting} == {"array_max_parallel"}
        assert sorted(t["position"] for t in waiting) == [1, 2, 3, 4]
        summary = (await api.get(f"/v0/arrays/{array['id']}")).json()
        assert summary["state"] == "RUNNING"
        assert (summary["summary"]["ASSIGNED"], summary["summary"]["QUEUED"]) == (3, 4)
        # One finishes: exactly one slot opens, taken by the next index.
        job_id, epoch, _ = held[0]
        await agent.finish(job_id, epoch, "task 0\n")
        freed = next(t for t in await _tasks(api, array["id"]) if t["arrayIndex"] == 3)
        assert freed["reason"] != "array_max_parallel"
        nxt = await agent.claim()
        assert nxt is not None and nxt[2]["TANVRIT_ARRAY_INDEX"] == "3"
        assert await agent.claim() is None
        # Run the rest to the end, never above 3 active.
        active = [c for c in held[1:3]] + [nxt]
        while active:
            job_id, epoch, _ = active.pop(0)
            await agent.finish(job_id, epoch, f"out {job_id}\n")
            while (more := await agent.claim()) is not None:
                active.append(more)
            assert len(active) <= 3
            counts = (await api.get(f"/v0/arrays/{array['id']}")).json()["summary"]
            assert counts["ASSIGNED"] + counts["RUNNING"] <= 3
        done = (await api.get(f"/v0/arrays/{array['id']}")).json()
        assert done["state"] == "SUCCEEDED" and done["summary"]["SUCCEEDED"] == 7


async def test_cancel_and_logs_work_on_the_array_or_one_task(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        array = await _submit_array(api, 6, 2)
        agent = await _agent(co)
        first = await agent.claim()
        second = await agent.claim()
        assert first is not None and second is not None
        await agent.finish(first[0], first[1], "zero\n")
        logs = await api.get(f"/v0/arrays/{array['id']}/logs")
        assert logs.status_code == 200 and logs.text == f"==> task 0 ({first[0]}) <==\nzero\n"
        assert (await api.get(f"/v0/arrays/{array['id']}/logs", params={"index": 0})).text == "zero\n"
        assert (await api.get(f"/v0/arrays/{array['id']}/logs", params={"index": 1})).text == ""
        too_far = await api.get(f"/v0/arrays/{array['id']}/logs", params={"index": 6})
        assert too_far.status_code == 422 and too_far.json()["error"]["field"] == "index"

        # One task cancelled alone, through the job route.
        task_2 = next(t for t in await _tasks(api, array["id"]) if t["arrayIndex"] == 2)
        assert (await api.post(f"/v0/jobs/{task_2['id']}:cancel")).json()["state"] == "CANCELLED"
        # The whole array: queued and assigned tasks at once; the finished one stays.
        cancelled = await api.post(f"/v0/arrays/{array['id']}:cancel")
        assert cancelled.status_code == 200, cancelled.text
        body = cancelled.json()
        assert body["state"] == "CANCELLED"
        assert (body["summary"]["SUCCEEDED"], body["summary"]["CANCELLED"]) == (1, 5)
        assert await agent.claim() is None  # nothing of it is dispatched any more
        again = await api.post(f"/v0/arrays/{array['id']}:cancel")
        assert again.status_code == 200 and again.json()["summary"] == body["summary"]
        # The slots went back with the cancelled assignment: the counter is not left behind.
        assert co.store.read_now("SELECT active FROM job_arrays WHERE id = ?", (array["id"],))[0][0] == 0


async def test_array_bounds_and_unknown_arrays_get_the_error_envelope(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        over = await api.post("/v0/jobs", json={**MANIFEST, "array": {"count": MAX_ARRAY_COUNT + 1}})
        assert over.status_code == 422 and over.json()["error"]["field"] == "array.count"
        zero = await api.post("/v0/jobs", json={**MANIFEST, "array": {"count": 0}})
        assert zero.status_code == 422
        wider = await api.post("/v0/jobs", json={**MANIFEST, "array": {"count": 3, "maxParallel": 4}})
        assert wider.status_code == 422 and wider.json()["error"]["field"] == "array.maxParallel"
        typo = await api.post("/v0/jobs", json={**MANIFEST, "array": {"count": 3, "parallel": 2}})
        assert typo.status_code == 400
        missing = await api.get("/v0/arrays/arr_01hzzzzzzzzzzzzzzzzzzzzzzz")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "array_not_found"
        assert (await api.post("/v0/arrays/arr_01hzzzzzzzzzzzzzzzzzzzzzzz:cancel")).status_code == 404
        assert (await api.get("/v0/arrays")).json()["items"] == []  # nothing was stored by the refusals


async def test_an_array_of_the_maximum_is_one_request_and_idempotent(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        headers = {"Idempotency-Key": "sweep-1"}
        body = {**MANIFEST, "array": {"count": MAX_ARRAY_COUNT, "maxParallel": 10}}
        created = await api.post("/v0/jobs", json=body, headers=headers)
        assert created.status_code == 201, created.text
        assert created.json()["summary"]["QUEUED"] == MAX_ARRAY_COUNT
        replay = await api.post("/v0/jobs", json=body, headers=headers)
        assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json()["id"] == created.json()["id"]
        other = await api.post("/v0/jobs", json={**body, "command": "false"}, headers=headers)
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
        assert co.store.read_now("SELECT COUNT(*) FROM jobs")[0][0] == MAX_ARRAY_COUNT


@pytest.mark.parametrize("env_name", ["TANVRIT_ARRAY_INDEX", "TANVRIT_ARRAY_COUNT"])
async def test_a_submitted_env_cannot_set_the_array_variables(tmp_path: Path, env_name: str) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        refused = await api.post("/v0/jobs", json={**MANIFEST, "env": {env_name: "7"}, "array": {"count": 2}})
        assert refused.status_code == 400 and refused.json()["error"]["field"] == f"env.{env_name}"


async def test_a_finished_task_wakes_the_claim_waiting_on_another_agent(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        array = await _submit_array(api, 3, 1)
        holder = await _agent(co, "holder")
        first = await holder.claim()
        assert first is not None
        _, waiter = await co.register_agent(name="waiter", cpus=64, memory_mb=65536)
        async with waiter:
            claim = ClaimRequest(free=FREE, waitSeconds=MAX_CLAIM_WAIT_SECONDS)
            answers: list[httpx.Response] = []

            async def wait_for_work() -> None:
                answers.append(await waiter.post("/agent/v0/claim", content=claim.model_dump_json(),
                                                 headers={"Content-Type": "application/json"}))

            with trio.fail_after(MAX_CLAIM_WAIT_SECONDS - 5):  # before waitSeconds: only the wake-up answers
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(wait_for_work)
                    await trio.testing.wait_all_tasks_blocked()
                    await holder.finish(first[0], first[1])
        assert answers[0].status_code == 200, answers[0].text
        assert answers[0].json()["env"]["TANVRIT_ARRAY_INDEX"] == "1"
        assert (await api.get(f"/v0/arrays/{array['id']}")).json()["summary"]["ASSIGNED"] == 1


async def test_an_array_cannot_copy_a_large_manifest_thousands_of_times(tmp_path: Path) -> None:
    """Every task stores its own copy of the manifest: one request under the body limit must not
    turn into gigabytes of rows (10,000 copies of a 1 MiB command are 10 GiB)."""
    async with open_inprocess(tmp_path) as co, co.client() as api:
        command = "echo " + "x" * (MAX_ARRAY_MANIFEST_BYTES // MAX_ARRAY_COUNT)
        refused = await api.post("/v0/jobs", json={**MANIFEST, "command": command,
                                                   "array": {"count": MAX_ARRAY_COUNT}})
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["field"]) == ("invalid_value", "array.count")
        assert error["message"].startswith(f"{MAX_ARRAY_COUNT} copies of this manifest ("), error
        assert co.store.read_now("SELECT COUNT(*) FROM jobs")[0][0] == 0
        assert (await api.get("/v0/arrays")).json()["items"] == []
        # The same manifest in fewer copies is accepted, and a small one in the most copies.
        fewer = MAX_ARRAY_MANIFEST_BYTES // (len(command) + 200)
        assert (await api.post("/v0/jobs", json={**MANIFEST, "command": command,
                                                 "array": {"count": fewer}})).status_code == 201
        await _submit_array(api, MAX_ARRAY_COUNT)


async def test_an_idempotency_key_of_an_array_is_not_reused_by_a_single_job(tmp_path: Path) -> None:
    """A key names one submission, array or job, whichever came first: a client that sends the
    key of an array with a single job's body is told so (409), as the other way round, instead of
    getting a second submission."""
    async with open_inprocess(tmp_path) as co, co.client() as api:
        headers = {"Idempotency-Key": "nightly"}
        array = await api.post("/v0/jobs", json={**MANIFEST, "array": {"count": 2}}, headers=headers)
        assert array.status_code == 201, array.text
        single = await api.post("/v0/jobs", json=MANIFEST, headers=headers)
        assert single.status_code == 409, single.text
        assert single.json()["error"]["code"] == "idempotency_key_reused"
        assert co.store.read_now("SELECT COUNT(*) FROM jobs")[0][0] == 2
        job = await api.post("/v0/jobs", json=MANIFEST, headers={"Idempotency-Key": "hourly"})
        assert job.status_code == 201, job.text
        again = await api.post("/v0/jobs", json={**MANIFEST, "array": {"count": 2}},
                               headers={"Idempotency-Key": "hourly"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "idempotency_key_reused"


async def test_the_logs_of_an_array_read_only_the_tasks_they_show(tmp_path: Path) -> None:
    """Reading an array's logs (or one task's, ``?index=N``) must not load every task's row: on
    SQLite the read runs on the event loop, and loading an array of 10,000 for one task's log
    stalled every other request for seconds."""
    async with open_inprocess(tmp_path) as co, co.client() as api:
        array = await _submit_array(api, 200, 2)
        agent = await _agent(co)
        claimed = [await agent.claim(), await agent.claim()]
        for task, output in zip(claimed, ("one\n", ""), strict=True):
            assert task is not None
            await agent.finish(task[0], task[1], output)
        loaded: list[int] = []
        original = co.store.list_jobs

        async def counting(*args: Any, **kwargs: Any) -> Any:
            found = await original(*args, **kwargs)
            loaded.append(len(found))
            return found

        co.store.list_jobs = counting  # type: ignore[method-assign]
        assert claimed[0] is not None
        whole = await api.get(f"/v0/arrays/{array['id']}/logs")
        assert whole.text == f"==> task 0 ({claimed[0][0]}) <==\none\n"
        assert (await api.get(f"/v0/arrays/{array['id']}/logs", params={"index": 0, "tail": 1})).text == "one\n"
        assert (await api.get(f"/v0/arrays/{array['id']}/logs", params={"index": 150})).text == ""
        assert sum(loaded) == 0, f"job rows loaded for the logs: {loaded}"
