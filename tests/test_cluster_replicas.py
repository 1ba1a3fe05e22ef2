"""Two real coordinator processes on one PostgreSQL database: waiters on one replica wake on
changes made through the other (LISTEN/NOTIFY), the leader's death hands the lease over, and
three replicas bootstrap an empty database once.

Wake-ups are checked against the waits they cut short: a claim, a held heartbeat and a log
follower each wait far longer (25 s, 25 s, 60 s keep-alive) than the bound asserted here, so
only a wake-up from the other replica answers them in time; no latency figure is asserted.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from common.protocol import CapacityMsg, ClaimRequest, HeartbeatRequest, RegisterRequest, RunningJob
from common.states import AgentState
from tests.procs import Coordinator, python_module, stop_process, wait_for

# The waits that a wake-up must cut short, and the bound it must beat (a fraction of them,
# generous for a loaded machine: a broken bus answers only at the full wait).
LONG_WAIT = 25.0
WOKEN_WITHIN = LONG_WAIT / 2

CONFIG = """
[server]
leader_lease_seconds = 4.0
leader_renew_seconds = 0.1
sse_keepalive_seconds = 60.0
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def two_replicas(tmp_path: Path, postgres_url: str, config: Path) -> Iterator[tuple[Coordinator, Coordinator]]:
    args = ("--database", postgres_url, "--config", str(config))
    first = Coordinator(tmp_path / "replica-a", extra_args=args)
    second = Coordinator(tmp_path / "replica-b", extra_args=args)
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        first.stop(signal.SIGKILL)
        second.stop(signal.SIGKILL)


def _client(coordinator: Coordinator, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=coordinator.url, timeout=LONG_WAIT * 3,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


@asynccontextmanager
async def clients(a: Coordinator, b: Coordinator) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """The owner and one registered agent, each with a client on either replica."""
    init = a.init
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as anonymous:
        registered = await anonymous.post(
            "/agent/v0/register",
            content=RegisterRequest(name="sim", labels={}, version="test",
                                    capacity=CapacityMsg(cpus=4, memoryMb=8192, gpus=0)).model_dump_json(),
            headers={"Authorization": f"Bearer {init['registrationToken']}", "Content-Type": "application/json"})
    assert registered.status_code == 201, registered.text
    agent_token = registered.json()["agentToken"]
    async with _client(a, init["ownerToken"]) as owner_a, _client(b, init["ownerToken"]) as owner_b, \
            _client(a, agent_token) as agent_a, _client(b, agent_token) as agent_b:
        yield {"owner_a": owner_a, "owner_b": owner_b, "agent_a": agent_a, "agent_b": agent_b,
               "agent_id": registered.json()["agentId"]}  # type: ignore[dict-item]


async def _answer_time(request: Any, act: Any) -> tuple[httpx.Response, float]:
    """Send ``request`` (a long wait), give it a moment to start waiting, ``act`` on the other
    replica, and return the answer with the seconds it took after the act."""
    answered: list[httpx.Response] = []
    acted_at: list[float] = []

    async def wait() -> None:
        answered.append(await request())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        # Not a synchronisation: if the request were not waiting yet, it would find the change
        # at once and pass anyway; this only makes the test exercise the wake-up.
        await trio.sleep(0.5)
        acted_at.append(trio.current_time())
        await act()
    return answered[0], trio.current_time() - acted_at[0]


# The log follower leaves its stream at the first line: httpx's and httpcore's own generators
# are then left to the garbage collector, which warns. Only those are ignored.
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <async_generator object (AsyncHTTP11Connection\._receive_response_body"
    r"|HTTP11ConnectionByteStream\.__aiter__|PoolByteStream\.__aiter__|AsyncResponseStream\.__aiter__"
    r"|BoundAsyncStream\.__aiter__|Response\.aiter_\w+) :pytest.PytestUnraisableExceptionWarning"
)
async def test_waiters_on_one_replica_wake_on_changes_made_through_the_other(
        two_replicas: tuple[Coordinator, Coordinator]) -> None:
    a, b = two_replicas
    assert not b.init, "the second replica must not initialise the database again"
    async with clients(a, b) as c:
        # 1. A claim long-polling replica A wakes when a job is submitted through replica B.
        submitted: list[str] = []

        async def submit() -> None:
            response = await c["owner_b"].post("/v0/jobs", json={"type": "COMMAND", "command": "true"})
            assert response.status_code == 201, response.text
            submitted.append(response.json()["id"])

        claim_body = ClaimRequest(free=CapacityMsg(cpus=4, memoryMb=8192, gpus=0),
                                  waitSeconds=LONG_WAIT).model_dump_json()
        claimed, after = await _answer_time(lambda: c["agent_a"].post("/agent/v0/claim", content=claim_body), submit)
        assert claimed.status_code == 200, claimed.text
        assert claimed.json()["jobId"] == submitted[0] and after < WOKEN_WITHIN
        job_id, epoch = submitted[0], claimed.json()["epoch"]

        # 2. A log follower on replica A wakes when the agent's events arrive through replica B.
        async def follow() -> list[str]:
            seen: list[str] = []
            async with c["owner_a"].stream("GET", f"/v0/jobs/{job_id}/logs", params={"follow": "true"}) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        seen.append(json.loads(line.removeprefix("data: ")))
                        return seen
            return seen

        async def log_through_b() -> None:
            events = {"events": [
                {"type": "started", "seq": 1, "jobId": job_id, "epoch": epoch, "at": "2026-01-01T00:00:00Z"},
                {"type": "log", "seq": 2, "jobId": job_id, "epoch": epoch, "data": "hello from b\n"}]}
            response = await c["agent_b"].post("/agent/v0/events", json=events)
            assert response.status_code == 200, response.text

        lines, after = await _answer_time(follow, log_through_b)
        assert lines == ["hello from b\n"] and after < WOKEN_WITHIN

        # 3. A held heartbeat on replica A is answered when the job is cancelled through replica B.
        beat = HeartbeatRequest(state=AgentState.READY, runningJobs=[RunningJob(jobId=job_id, epoch=epoch)],
                                waitSeconds=LONG_WAIT).model_dump_json()

        async def cancel() -> None:
            response = await c["owner_b"].post(f"/v0/jobs/{job_id}:cancel")
            assert response.status_code == 200, response.text

        held, after = await _answer_time(lambda: c["agent_a"].post("/agent/v0/heartbeat", content=beat), cancel)
        assert held.status_code == 200, held.text
        assert held.json()["cancelJobs"] == [job_id] and after < WOKEN_WITHIN


# --- the leader lease across processes ---------------------------------------------------------

def _is_leader(url: str) -> bool:
    found = re.search(r"^tanvrit_leader (\S+)$", httpx.get(f"{url}/metrics", timeout=10).text, re.MULTILINE)
    return found is not None and float(found.group(1)) == 1.0


def _holder_pid(postgres_url: str) -> int | None:
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT holder FROM leader_leases WHERE name = 'cluster'").fetchone()
    return None if row is None else int(str(row[0]).split(":")[-2])


def test_sigkill_the_leader_replica_and_the_other_takes_over(two_replicas: tuple[Coordinator, Coordinator],
                                                            postgres_url: str) -> None:
    a, b = two_replicas
    assert a.process is not None and b.process is not None
    processes = {a.process.pid: a, b.process.pid: b}
    holder = wait_for(lambda: _holder_pid(postgres_url), message="a leader")
    leader = processes[holder]
    follower = b if leader is a else a
    wait_for(lambda: _is_leader(leader.url) and not _is_leader(follower.url), message="one leader, one follower")
    # The cluster gauges come from the leader alone.
    assert "\ntanvrit_jobs{" in httpx.get(f"{leader.url}/metrics").text
    assert "\ntanvrit_jobs{" not in httpx.get(f"{follower.url}/metrics").text
    leader.stop(signal.SIGKILL)
    assert follower.process is not None
    wait_for(lambda: _holder_pid(postgres_url) == follower.process.pid and _is_leader(follower.url),
             message="the surviving replica takes over")


# --- bootstrap --------------------------------------------------------------------------------

def test_three_replicas_starting_at_once_bootstrap_an_empty_postgresql_database_once(
        tmp_path: Path, postgres_url: str) -> None:
    started: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    try:
        for n in range(3):
            data_dir, out, err = tmp_path / f"r{n}", tmp_path / f"r{n}.out", tmp_path / f"r{n}.log"
            data_dir.mkdir()
            with out.open("wb") as stdout, err.open("wb") as stderr:
                started.append((subprocess.Popen(
                    python_module("coordinator", "serve", "--bind", "127.0.0.1:0", "--data-dir", str(data_dir),
                                  "--database", postgres_url, "--init-json"),
                    stdout=stdout, stderr=stderr), out, err))

        def all_listening() -> bool:
            for process, _, log in started:
                assert process.poll() is None, f"a replica exited: {log.read_text()[-3000:]}"
            return all("coordinator listening" in log.read_text() for _, _, log in started)

        wait_for(all_listening, timeout=120, message="every replica listening")
        inits = [out.read_text() for _, out, _ in started if out.read_text().startswith("{")]
        assert len(inits) == 1
        import psycopg

        with psycopg.connect(postgres_url) as conn:
            users = conn.execute("SELECT id FROM users").fetchall()
        assert [row[0] for row in users] == [json.loads(inits[0].splitlines()[0])["userId"]]
    finally:
        for process, _, _ in started:
            stop_process(process, signal.SIGKILL, 10)


# --- the leader killed in the middle of a meter tick -------------------------------------------

QUICK_METER = CONFIG + """
[billing]
meter_interval_seconds = 0.2
"""


def _query(postgres_url: str, sql: str) -> Any:
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        return conn.execute(sql).fetchone()


async def test_the_leader_killed_in_the_middle_of_a_meter_tick_counts_no_usage_twice_or_never(
        tmp_path: Path, postgres_url: str) -> None:
    import psycopg

    config = tmp_path / "meter.toml"
    config.write_text(QUICK_METER)
    args = ("--database", postgres_url, "--config", str(config))
    a = Coordinator(tmp_path / "replica-a", extra_args=args)
    b = Coordinator(tmp_path / "replica-b", extra_args=args)
    blocker: psycopg.Connection[Any] | None = None
    try:
        await trio.to_thread.run_sync(a.start)
        await trio.to_thread.run_sync(b.start)
        assert a.process is not None and b.process is not None
        async with clients(a, b) as c:
            submitted = await c["owner_a"].post("/v0/jobs", json={"type": "COMMAND", "command": "true"})
            job_id = submitted.json()["id"]
            claim = ClaimRequest(free=CapacityMsg(cpus=4, memoryMb=8192, gpus=0), waitSeconds=5).model_dump_json()
            epoch = (await c["agent_a"].post("/agent/v0/claim", content=claim)).json()["epoch"]

            async def usage(client: httpx.AsyncClient, seq: int, cpu: float) -> None:
                event = {"type": "usage", "seq": seq, "jobId": job_id, "epoch": epoch, "cpuSeconds": cpu,
                         "gbSeconds": 0, "gpuSeconds": 0}
                response = await client.post("/agent/v0/events", json={"events": [event]})
                assert response.status_code == 200 and not response.json()["rejected"], response.text

            started = {"type": "started", "seq": 1, "jobId": job_id, "epoch": epoch, "at": "2026-01-01T00:00:00Z"}
            assert (await c["agent_a"].post("/agent/v0/events", json={"events": [started]})).status_code == 200
            await usage(c["agent_a"], 2, 1.0)
            rolled = "SELECT COUNT(*) FROM usage_records WHERE rolled_up <> 1"
            await trio.to_thread.run_sync(lambda: wait_for(lambda: _query(postgres_url, rolled)[0] == 0,
                                                           message="the first usage rolled up"))
            leader_pid = _pid_of(_query(postgres_url, "SELECT holder FROM leader_leases")[0])
            leader, survivor = (a, b) if leader_pid == a.process.pid else (b, a)

            # Hold the roll-up table: the leader's next tick stops inside its transaction (its
            # ledger rows marked, nothing summed yet), with the lease row locked by its fence.
            blocker = await trio.to_thread.run_sync(lambda: psycopg.connect(postgres_url))
            blocker.execute("LOCK TABLE usage_hourly IN EXCLUSIVE MODE")
            await usage(c["agent_b" if survivor is b else "agent_a"], 3, 3.0)
            waiting = ("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                       "AND query LIKE 'INSERT INTO usage_hourly%'")
            await trio.to_thread.run_sync(lambda: wait_for(lambda: _query(postgres_url, waiting)[0] == 1,
                                                           message="the leader's tick waiting mid-transaction"))
            leader.stop(signal.SIGKILL)
            blocker.commit()  # the dead leader's transaction ends without a commit
        await trio.to_thread.run_sync(lambda: wait_for(
            lambda: _pid_of(_query(postgres_url, "SELECT holder FROM leader_leases")[0]) == survivor.process.pid
            and _query(postgres_url, rolled)[0] == 0, message="the survivor leads and rolls the usage up"))
        ledger, hourly = _query(postgres_url, "SELECT (SELECT SUM(cpu_micros) FROM usage_records), "
                                              "(SELECT SUM(cpu_micros) FROM usage_hourly)")
        # 3 CPU-seconds in all (the second report is cumulative), counted once.
        assert (int(ledger), int(hourly)) == (3_000_000, 3_000_000)
    finally:
        if blocker is not None:
            blocker.close()
        a.stop(signal.SIGKILL)
        b.stop(signal.SIGKILL)


def _pid_of(holder: str) -> int:
    return int(holder.split(":")[-2])
