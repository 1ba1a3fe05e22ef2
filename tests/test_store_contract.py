"""The store contract: what the API and the background tasks rely on, run against every backend.

Each test takes the ``store`` fixture (tests/conftest.py), parametrised over SQLite and
PostgreSQL (a throwaway server, tests/postgres.py): a backend is done when this file passes on
it. Tests read the database only through the store's own methods or ``await store._read``
(portable SQL), never through one backend's connection. SQLite-only behaviour (group commit,
migration files) is in tests/test_store_sqlite.py.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import trio

from common.clock import from_millis
from common.ids import new_id
from common.protocol import (
    CapacityMsg,
    FinishedEvent,
    HandbackEvent,
    HeartbeatRequest,
    LogEvent,
    RunningJob,
    StartedEvent,
    UsageEvent,
)
from common.states import AgentState, JobState
from coordinator.billing import BillingConfig
from coordinator.store.base import (
    AgentRecord,
    AuditFilter,
    AuditRecord,
    DeleteOutcome,
    IdempotencyConflict,
    InvitationRecord,
    JobFilter,
    JobRecord,
    Store,
    TokenRecord,
    WorkspaceRecord,
)
from coordinator.store.base_billing import WebhookRecord
from coordinator.store.errors import InvalidValue, MembershipConflict

FREE = CapacityMsg(cpus=64, memoryMb=1 << 20, gpus=0)
HOUR = 3_600_000


async def _workspace(store: Store) -> str:
    await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                          tokens=[], now=0)
    return "ws_1"


def _job(job_id: str, created: int = 1, **extra: object) -> JobRecord:
    fields: dict[str, object] = {"labels": {}, "resources": None, "env": {}, **extra}
    return JobRecord(id=job_id, workspace_id="ws_1", state=JobState.QUEUED, command="true",
                     name=fields.pop("name", None), timeout_seconds=60, created_at=created,  # type: ignore[arg-type]
                     **fields)  # type: ignore[arg-type]


async def _agent(store: Store, agent_id: str, *, labels: dict[str, str] | None = None) -> None:
    await store.register_agent(
        AgentRecord(id=agent_id, workspace_id="ws_1", name=agent_id, state=AgentState.READY, labels=labels or {},
                    capacity=FREE.model_dump(), version="t", registered_at=0),
        TokenRecord(id=f"tok_{agent_id}", kind="agent", token_hash=f"h{agent_id}", workspace_id="ws_1", user_id=None,
                    agent_id=agent_id, name="a", created_at=0),
    )


async def test_a_submission_reads_the_hard_cap_and_the_agents_at_once(store: Store) -> None:
    await _workspace(store)
    assert await store.submission_state("ws_1") == (False, [])
    await _agent(store, "agt_1", labels={"gpu": "h100"})
    await _agent(store, "agt_2")
    reached, agents = await store.submission_state("ws_1")
    assert not reached
    assert sorted(map(repr, agents)) == sorted(map(repr, await store.agent_snapshots("ws_1")))
    assert sorted(agent.labels.get("gpu", "") for agent in agents) == ["", "h100"]


async def test_concurrent_claims_run_each_job_exactly_once(store: Store) -> None:
    await _workspace(store)
    for index in range(200):
        await store.insert_job(_job(f"job_{index:04d}", created=index))
    agents = [f"agt_{n:02d}" for n in range(20)]
    for agent_id in agents:
        await _agent(store, agent_id)
    claimed: list[str] = []

    async def claimer(agent_id: str) -> None:
        while (assignment := await store.claim_job(agent_id, FREE, None, 1)) is not None:
            claimed.append(assignment.jobId)

    async with trio.open_nursery() as nursery:
        for agent_id in agents:
            nursery.start_soon(claimer, agent_id)
    assert sorted(claimed) == [f"job_{index:04d}" for index in range(200)]


async def test_oldest_job_first(store: Store) -> None:
    await _workspace(store)
    await store.insert_job(_job("job_b", created=2))
    await store.insert_job(_job("job_a", created=1))
    await _agent(store, "agt_1")
    first = await store.claim_job("agt_1", FREE, None, 3)
    assert first is not None and first.jobId == "job_a" and first.epoch == 1


async def test_idempotency(store: Store) -> None:
    await _workspace(store)
    first = await store.insert_job(_job("job_1"), idempotency_key="k", request_hash="h1",
                                   idempotency_window_ms=1000)
    again = await store.insert_job(_job("job_2", created=500), idempotency_key="k", request_hash="h1",
                                   idempotency_window_ms=1000)
    assert again.id == first.id == "job_1"
    with pytest.raises(IdempotencyConflict):
        await store.insert_job(_job("job_3", created=600), idempotency_key="k", request_hash="h2",
                               idempotency_window_ms=1000)
    # Past the window the key is free again.
    later = await store.insert_job(_job("job_4", created=5000), idempotency_key="k", request_hash="h2",
                                   idempotency_window_ms=1000)
    assert later.id == "job_4"
    assert len(await store.list_jobs("ws_1", JobFilter(), limit=10, before_id=None)) == 2


async def test_events_apply_once_and_stale_epochs_are_refused(store: Store) -> None:
    await _workspace(store)
    await store.insert_job(_job("job_1"))
    await _agent(store, "agt_1")
    assignment = await store.claim_job("agt_1", FREE, None, 1)
    assert assignment is not None
    events = [
        StartedEvent(seq=1, jobId="job_1", epoch=1, at="1970-01-01T00:00:00Z"),
        LogEvent(seq=2, jobId="job_1", epoch=1, data="hi\n"),
        LogEvent(seq=3, jobId="job_1", epoch=7, data="stale\n"),
        FinishedEvent(seq=4, jobId="job_1", epoch=1, at="1970-01-01T00:00:01Z", state=JobState.SUCCEEDED,
                      exitCode=0, runtimeMs=1000),
    ]
    first = await store.apply_events("agt_1", list(events), 2)
    replay = await store.apply_events("agt_1", list(events), 3)
    assert first.appliedThrough == replay.appliedThrough == 4
    assert [(r.seq, r.code) for r in first.rejected] == [(3, "stale_epoch")]
    assert replay.rejected == []
    chunks = await store.read_log("ws_1", "job_1", 0)
    assert b"".join(c.data for c in chunks) == b"hi\n"
    job = await store.get_job("ws_1", "job_1")
    assert job is not None and job.state == JobState.SUCCEEDED and job.runtime_ms == 1000


async def test_reads_are_scoped_to_the_workspace(store: Store) -> None:
    await _workspace(store)
    await store.insert_job(_job("job_1"))
    assert await store.get_job("ws_other", "job_1") is None
    assert await store.list_jobs("ws_other", JobFilter(), limit=10, before_id=None) == []
    assert await store.cancel_job("ws_other", "job_1", 1) is None
    assert await store.job_created_at("ws_other", "job_1") is None


async def test_job_created_at_is_the_submission_time(store: Store) -> None:
    await _workspace(store)
    await store.insert_job(_job("job_1", created=1_700_000_000_123))
    assert await store.job_created_at("ws_1", "job_1") == 1_700_000_000_123
    assert await store.job_created_at("ws_1", "job_missing") is None


async def test_handback_requeues_under_a_new_epoch_or_cancels_if_asked(store: Store) -> None:
    await _workspace(store)
    await store.insert_job(_job("job_1"))
    await store.insert_job(_job("job_2", created=2))
    await _agent(store, "agt_1")
    for job_id in ("job_1", "job_2"):
        assignment = await store.claim_job("agt_1", FREE, None, 1)
        assert assignment is not None and assignment.jobId == job_id
    await store.apply_events("agt_1", [
        StartedEvent(seq=1, jobId="job_1", epoch=1, at="1970-01-01T00:00:00Z"),
        StartedEvent(seq=2, jobId="job_2", epoch=1, at="1970-01-01T00:00:00Z"),
    ], 2)
    cancelled = await store.cancel_job("ws_1", "job_2", 3)
    assert cancelled is not None and cancelled.cancel_requested
    result = await store.apply_events("agt_1", [
        HandbackEvent(seq=3, jobId="job_1", epoch=1, at="1970-01-01T00:00:05Z"),
        HandbackEvent(seq=4, jobId="job_2", epoch=1, at="1970-01-01T00:00:05Z"),
    ], 4)
    assert result.rejected == []
    requeued = await store.get_job("ws_1", "job_1")
    assert requeued is not None
    assert (requeued.state, requeued.agent_id, requeued.started_at) == (JobState.QUEUED, None, None)
    stopped = await store.get_job("ws_1", "job_2")
    assert stopped is not None and stopped.state == JobState.CANCELLED
    again = await store.claim_job("agt_1", FREE, None, 5)
    assert again is not None and (again.jobId, again.epoch) == ("job_1", 2)
    # The old attempt can no longer report anything.
    late = await store.apply_events("agt_1", [
        FinishedEvent(seq=5, jobId="job_1", epoch=1, at="1970-01-01T00:00:06Z", state=JobState.SUCCEEDED,
                      exitCode=0, runtimeMs=1)], 6)
    assert [(r.seq, r.code) for r in late.rejected] == [(5, "stale_epoch")]


async def test_a_bad_event_is_refused_alone_and_the_rest_applies(store: Store) -> None:
    await _workspace(store)
    await store.insert_job(_job("job_1"))
    await _agent(store, "agt_1")
    assert await store.claim_job("agt_1", FREE, None, 1) is not None
    result = await store.apply_events("agt_1", [
        StartedEvent(seq=1, jobId="job_1", epoch=1, at="not a time"),
        StartedEvent(seq=2, jobId="job_1", epoch=1, at="1970-01-01T00:00:00Z"),
        # A "result" that is no result: refused, the job stays RUNNING.
        FinishedEvent(seq=3, jobId="job_1", epoch=1, at="1970-01-01T00:00:01Z", state=JobState.QUEUED,
                      exitCode=0, runtimeMs=1),
        LogEvent(seq=4, jobId="job_1", epoch=1, data="still here\n"),
        FinishedEvent(seq=5, jobId="job_1", epoch=1, at="1970-01-01T00:00:02Z", state=JobState.SUCCEEDED,
                      exitCode=0, runtimeMs=2000),
    ], 2)
    assert result.appliedThrough == 5
    assert [(r.seq, r.code) for r in result.rejected] == [(1, "invalid_time"), (3, "invalid_state")]
    job = await store.get_job("ws_1", "job_1")
    assert job is not None and job.state == JobState.SUCCEEDED and job.exit_code == 0
    assert b"".join(c.data for c in await store.read_log("ws_1", "job_1", 0)) == b"still here\n"


async def test_a_running_job_its_live_agent_stops_reporting_becomes_lost(store: Store) -> None:
    await _workspace(store)
    await store.insert_job(_job("job_1"))
    await _agent(store, "agt_1")
    assert await store.claim_job("agt_1", FREE, None, 1) is not None
    await store.apply_events("agt_1", [StartedEvent(seq=1, jobId="job_1", epoch=1, at="1970-01-01T00:00:00Z")], 2)
    listed = HeartbeatRequest(state=AgentState.READY, runningJobs=[RunningJob(jobId="job_1", epoch=1)])
    silent = HeartbeatRequest(state=AgentState.READY, runningJobs=[])
    await store.record_heartbeat("agt_1", listed, 1_000)
    await store.record_heartbeat("agt_1", silent, 2_000)  # not listed from here on
    await store.record_heartbeat("agt_1", listed, 50_000)  # listed again: the clock restarts
    await store.record_heartbeat("agt_1", silent, 60_000)
    await store.record_heartbeat("agt_1", silent, 60_000 + 60_000)  # exactly the grace: still RUNNING
    job = await store.get_job("ws_1", "job_1")
    assert job is not None and job.state == JobState.RUNNING
    await store.record_heartbeat("agt_1", silent, 60_000 + 60_001)
    job = await store.get_job("ws_1", "job_1")
    assert job is not None and (job.state, job.reason) == (JobState.LOST, "agent_forgot")
    # Its result, should it still come at the job's own epoch, replaces LOST.
    await store.apply_events("agt_1", [
        FinishedEvent(seq=2, jobId="job_1", epoch=1, at="1970-01-01T00:02:00Z", state=JobState.SUCCEEDED,
                      exitCode=0, runtimeMs=120_000)], 130_000)
    job = await store.get_job("ws_1", "job_1")
    assert job is not None and job.state == JobState.SUCCEEDED


def _token(token_id: str, kind: str, *, user_id: str | None = None) -> TokenRecord:
    return TokenRecord(id=token_id, kind=kind, token_hash=f"hash_{token_id}", workspace_id="ws_1", user_id=user_id,
                       agent_id=None, name=token_id, created_at=0)


def _invitation(invitation_id: str, user_id: str) -> InvitationRecord:
    return InvitationRecord(id=invitation_id, workspace_id="ws_1", user_id=user_id,
                            code_hash=f"code_{invitation_id}", role="member", created_by="usr_1", created_at=0,
                            expires_at=1_000_000)


# --- jobs: lists, filters, pages ----------------------------------------------------------------

async def test_list_filters_and_pages(store: Store) -> None:
    await _workspace(store)
    # Ids minted as the API mints them (time-ordered), which the creation-window filter relies on.
    ids = [new_id("job", from_millis(10_000 + 1_000 * index)) for index in range(5)]
    for index, job_id in enumerate(ids):
        await store.insert_job(_job(job_id, created=10_000 + 1_000 * index,
                                    labels={"pool": "a" if index % 2 else "b"}))
    newest_first = ids[::-1]
    everything = await store.list_jobs("ws_1", JobFilter(), limit=10, before_id=None)
    assert [job.id for job in everything] == newest_first
    first = await store.list_jobs("ws_1", JobFilter(), limit=2, before_id=None)
    second = await store.list_jobs("ws_1", JobFilter(), limit=2, before_id=first[-1].id)
    assert [job.id for job in first + second] == newest_first[:4]
    labelled = await store.list_jobs("ws_1", JobFilter(labels=(("pool", "a"),)), limit=10, before_id=None)
    assert [job.id for job in labelled] == [ids[3], ids[1]]
    assert await store.list_jobs("ws_1", JobFilter(labels=(("pool", "z"),)), limit=10, before_id=None) == []
    window = await store.list_jobs("ws_1", JobFilter(created_after=11_000, created_before=14_000), limit=10,
                                   before_id=None)
    assert [job.id for job in window] == [ids[3], ids[2]]
    await _agent(store, "agt_1", labels={"pool": "b"})
    assert await store.claim_job("agt_1", FREE, None, 20_000) is not None
    assigned = await store.list_jobs("ws_1", JobFilter(states=(JobState.ASSIGNED,)), limit=10, before_id=None)
    assert [(job.id, job.state, job.agent_id) for job in assigned] == [(ids[0], JobState.ASSIGNED, "agt_1")]
    both = await store.list_jobs("ws_1", JobFilter(states=(JobState.ASSIGNED, JobState.QUEUED)), limit=10,
                                 before_id=None)
    assert [job.id for job in both] == newest_first
    assert await store.count_jobs_by_state() == {"QUEUED": 4, "ASSIGNED": 1}
    assert await store.find_idempotent_job("ws_1", "nope", 0) is None


async def test_a_job_keeps_what_was_submitted(store: Store) -> None:
    await _workspace(store)
    submitted = _job("job_1", labels={"gpu": "h100", "zone": "a"}, resources={"cpus": 2, "memoryMb": 512},
                     env={"A": "1"}, priority=70, name="n")
    await store.insert_job(submitted, idempotency_key="key", request_hash="h", idempotency_window_ms=10)
    job = await store.get_job("ws_1", "job_1")
    assert job is not None
    assert (job.labels, job.resources, job.env, job.priority, job.name, job.state, job.epoch, job.attempts) == (
        {"gpu": "h100", "zone": "a"}, {"cpus": 2, "memoryMb": 512}, {"A": "1"}, 70, "n", JobState.QUEUED, 0, [])
    found = await store.find_idempotent_job("ws_1", "key", 0)
    assert found is not None and found[0].id == "job_1" and found[1] == "h"


# --- claims and the state machine ---------------------------------------------------------------

async def test_claims_match_labels_and_fit_capacity(store: Store) -> None:
    await _workspace(store)
    await store.insert_job(_job("job_gpu", created=1, labels={"gpu": "h100"}))
    await store.insert_job(_job("job_big", created=2, resources={"cpus": 128}))
    await store.insert_job(_job("job_any", created=3))
    await _agent(store, "agt_1", labels={"zone": "a"})
    await _agent(store, "agt_2", labels={"gpu": "h100", "zone": "b"})
    first = await store.claim_job("agt_1", FREE, None, 5)
    assert first is not None and first.jobId == "job_any"  # the oldest it matches and fits
    assert await store.claim_job("agt_1", FREE, None, 5) is None
    second = await store.claim_job("agt_2", FREE, None, 5)
    assert second is not None and second.jobId == "job_gpu"
    job = await store.get_job("ws_1", "job_gpu")
    assert job is not None and [(a.epoch, a.agent_id, a.state) for a in job.attempts] == [
        (1, "agt_2", JobState.ASSIGNED)]


async def test_cancel_release_requeue_and_lease_expiry(store: Store) -> None:
    await _workspace(store)
    for index in range(4):
        await store.insert_job(_job(f"job_{index}", created=index + 1))
    await _agent(store, "agt_1")
    queued_cancel = await store.cancel_job("ws_1", "job_3", 2)
    assert queued_cancel is not None and queued_cancel.state == JobState.CANCELLED
    for _ in range(3):
        assert await store.claim_job("agt_1", FREE, None, 10) is not None
    assert await store.release_assignment("agt_1", "job_0", 1, 11) == "ws_1"
    assert await store.release_assignment("agt_1", "job_0", 1, 11) is None  # already released
    requeued = await store.requeue_stale_assignments(assigned_before=11, now=12)
    assert sorted(requeued) == [("job_1", "ws_1"), ("job_2", "ws_1")]
    again = await store.claim_job("agt_1", FREE, None, 20)
    assert again is not None and (again.jobId, again.epoch) == ("job_0", 2)
    await store.apply_events("agt_1", [StartedEvent(seq=1, jobId="job_0", epoch=2, at="1970-01-01T00:00:00.02Z")],
                             21)
    assert await store.expire_leases("agt_1", seen_before=0, now=22) == []  # heard from since
    assert await store.expire_leases("agt_1", seen_before=1_000, now=1_000) == ["job_0"]
    lost = await store.get_job("ws_1", "job_0")
    assert lost is not None and (lost.state, lost.reason) == (JobState.LOST, "agent_lost")


async def test_heartbeats_drain_goodbye_and_delete(store: Store) -> None:
    await _workspace(store)
    await store.insert_job(_job("job_1"))
    await store.insert_job(_job("job_2", created=2))
    await _agent(store, "agt_1")
    assert await store.claim_job("agt_1", FREE, None, 1) is not None
    beat = HeartbeatRequest(state=AgentState.READY, runningJobs=[RunningJob(jobId="job_1", epoch=1)],
                            labels={"zone": "c"})
    assert await store.record_heartbeat("agt_1", beat, 100) == (False, [])
    agent = await store.get_agent("ws_1", "agt_1")
    assert agent is not None and agent.labels == {"zone": "c"} and agent.last_heartbeat_at == 100
    assert agent.current_jobs == ["job_1"]
    # What a claim long-poll reads of its agent: the labels as they now stand, and whether it
    # takes work (not once draining, nothing once deleted, nothing from another workspace).
    assert await store.claimant("ws_1", "agt_1") == ({"zone": "c"}, True)
    assert await store.claimant("ws_2", "agt_1") is None
    drained = await store.set_agent_drain("ws_1", "agt_1", True)
    assert drained is not None and drained.drain_requested
    assert await store.claimant("ws_1", "agt_1") == ({"zone": "c"}, False)
    assert await store.claim_job("agt_1", FREE, None, 101) is None  # draining: no new work
    assert await store.agent_orders("agt_1", [RunningJob(jobId="job_1", epoch=1)]) == (True, [])
    assert await store.agent_orders("agt_1", [RunningJob(jobId="job_1", epoch=9)]) == (True, ["job_1"])
    assert [agent.id for agent in await store.list_agents("ws_1", limit=10, before_id=None)] == ["agt_1"]
    assert await store.delete_agent("ws_1", "agt_1", force=False, now=102) == DeleteOutcome.BUSY
    assert await store.agent_goodbye("agt_1", 103) == ["job_1"]
    assert await store.delete_agent("ws_1", "agt_1", force=False, now=104) == DeleteOutcome.DELETED
    assert await store.get_agent("ws_1", "agt_1") is None
    assert await store.claimant("ws_1", "agt_1") is None
    assert await store.delete_agent("ws_1", "agt_1", force=False, now=105) == DeleteOutcome.NOT_FOUND
    assert await store.mark_agent_down("agt_1", seen_before=10_000, now=10_000) is False  # deleted


async def test_liveness_marks_a_silent_agent_down_once(store: Store) -> None:
    await _workspace(store)
    await _agent(store, "agt_1")
    pulses = await store.agent_pulses()
    assert [(p.agent_id, p.state, p.active_jobs) for p in pulses] == [("agt_1", AgentState.READY, 0)]
    assert await store.live_agent_count() == 1  # the fleet the heartbeat cadence scales with
    # What a liveness pass reads: only agents silent since strictly before the cut-off.
    assert await store.agent_pulses(silent_before=0) == []
    assert [p.agent_id for p in await store.agent_pulses(silent_before=1)] == ["agt_1"]
    assert await store.mark_agent_down("agt_1", seen_before=0, now=1) is False  # registered at 0: not before 0
    assert await store.mark_agent_down("agt_1", seen_before=5, now=6) is True
    assert await store.live_agent_count() == 0
    # DOWN and holding no job: nothing left to decide, not read again.
    assert await store.agent_pulses(silent_before=10_000) == []
    assert [p.agent_id for p in await store.agent_pulses()] == ["agt_1"]
    assert await store.mark_agent_down("agt_1", seen_before=5, now=7) is False
    assert await store.count_agents_by_state() == {"DOWN": 1}


# --- identity -------------------------------------------------------------------------------------

async def test_tokens_find_list_revoke_and_rotate_once(store: Store) -> None:
    assert await store.is_empty()
    await _workspace(store)
    assert not await store.is_empty()
    pat = _token("tok_pat", "pat", user_id="usr_1")
    await store.insert_token(pat)
    assert await store.find_token("hash_tok_pat") == pat
    assert [t.id for t in await store.list_tokens("ws_1", "pat", limit=10, before_id=None)] == ["tok_pat"]
    revoked = await store.revoke_token("ws_1", "tok_pat", 5)
    assert revoked is not None and revoked.revoked_at == 5
    assert await store.revoke_token("ws_other", "tok_pat", 6) is None
    await store.insert_token(_token("tok_r1", "refresh", user_id="usr_1"))
    old = await store.rotate_refresh_token("hash_tok_r1", 10, _token("tok_a2", "access"), _token("tok_r2", "refresh"))
    assert old is not None and old.id == "tok_r1"
    # The rotated token used again is a replay: refused, and its whole family revoked.
    assert await store.rotate_refresh_token("hash_tok_r1", 11, _token("tok_a3", "access"),
                                            _token("tok_r3", "refresh")) is None
    successor = await store.get_token("ws_1", "tok_r2")
    assert successor is not None and successor.revoked_at == 11


async def test_memberships_invitations_and_the_last_owner(store: Store) -> None:
    await _workspace(store)
    membership = await store.membership("ws_1", "usr_1")
    assert membership is not None and (membership.role, membership.plan) == ("owner", "hobby")
    invited = await store.invite_member(workspace_id="ws_1", email="b@x", role="member", new_user_id="usr_2",
                                        invitation=_invitation("inv_1", "usr_2"))
    assert (invited.user_id, invited.invited) == ("usr_2", True)
    with pytest.raises(MembershipConflict) as conflict:
        await store.invite_member(workspace_id="ws_1", email="b@x", role="member", new_user_id="usr_3",
                                  invitation=_invitation("inv_2", "usr_3"))
    assert conflict.value.code == "already_member"
    redeemed = await store.redeem_invitation("code_inv_1", 5, [_token("tok_b", "pat")])
    assert redeemed is not None and redeemed.user_id == "usr_2"
    assert await store.redeem_invitation("code_inv_1", 6, [_token("tok_c", "pat")]) is None  # once
    minted = await store.find_token("hash_tok_b")
    assert minted is not None and (minted.user_id, minted.workspace_id) == ("usr_2", "ws_1")
    with pytest.raises(MembershipConflict) as last:
        await store.set_member_role("ws_1", "usr_1", "member")
    assert last.value.code == "last_owner"
    promoted = await store.set_member_role("ws_1", "usr_2", "owner")
    assert promoted is not None and promoted.role == "owner"
    assert await store.remove_member("ws_1", "usr_1", 7)
    assert [m.user_id for m in await store.list_members("ws_1", limit=10, before_id=None)] == ["usr_2"]
    await store.create_workspace(WorkspaceRecord(id="ws_2", name="two", plan="team", default_region=None,
                                                 created_at=8), owner_id="usr_2")
    assert [w.id for w in await store.list_user_workspaces("usr_2", limit=10, before_id=None)] == ["ws_2", "ws_1"]
    renamed = await store.update_workspace("ws_2", {"name": "renamed"})
    assert renamed is not None and renamed.name == "renamed"


async def test_an_existing_account_added_gets_a_code_scoped_to_that_membership(store: Store) -> None:
    """The account joins at once (not ``invited``); its membership carries the new invitation,
    whose code is redeemed once (compare-and-set) for a login bound to that invitation."""
    await _workspace(store)
    await store.create_workspace(WorkspaceRecord(id="ws_2", name="two", plan="team", default_region=None,
                                                 created_at=2), owner_id="usr_1")
    first = await store.invite_member(workspace_id="ws_1", email="b@x", role="member", new_user_id="usr_2",
                                      invitation=_invitation("inv_1", "usr_2"))
    again = await store.invite_member(workspace_id="ws_2", email="b@x", role="admin", new_user_id="usr_3",
                                      invitation=_invitation("inv_2", "usr_3"))
    assert (first.invited, again.user_id, again.invited) == (True, "usr_2", False)
    listed = await store.get_member("ws_2", "usr_2")
    assert listed is not None and not listed.invited  # an open code of an existing account: still active
    in_two = await store.membership("ws_2", "usr_2")
    in_one = await store.membership("ws_1", "usr_2")
    assert in_two is not None and (in_two.role, in_two.invitation_id) == ("admin", "inv_2")
    assert in_one is not None and in_one.invitation_id == "inv_1"
    redeemed = await store.redeem_invitation("code_inv_2", 5, [_token("tok_b", "refresh")])
    assert redeemed is not None and (redeemed.workspace_id, redeemed.user_id) == ("ws_2", "usr_2")
    assert await store.redeem_invitation("code_inv_2", 6, [_token("tok_c", "refresh")]) is None  # once
    minted = await store.find_token("hash_tok_b")
    assert minted is not None and (minted.user_id, minted.workspace_id, minted.invitation_id) == ("usr_2", "ws_2",
                                                                                                  "inv_2")
    assert await store.find_token("hash_tok_c") is None


async def test_audit_rows_filter_and_page(store: Store) -> None:
    await _workspace(store)
    for index, action in enumerate(["job.submit", "job.cancel", "job.submit"]):
        await store.append_audit(AuditRecord(
            id=f"aud_{index}", workspace_id="ws_1", at=100 + index, actor="usr_1", action=action, target=None,
            result="succeeded", status=200, error_code=None, request_id=f"req_{index}", source="127.0.0.1",
            method="POST", path="/v0/jobs"))
    rows = await store.list_audit("ws_1", AuditFilter(), limit=10, before_seq=None)
    assert [row.id for row in rows] == ["aud_2", "aud_1", "aud_0"]
    submits = await store.list_audit("ws_1", AuditFilter(actions=("job.submit",)), limit=10, before_seq=None)
    assert [row.id for row in submits] == ["aud_2", "aud_0"]
    page = await store.list_audit("ws_1", AuditFilter(since=101), limit=1, before_seq=rows[0].seq)
    assert [row.id for row in page] == ["aud_1"]
    assert await store.list_audit("ws_other", AuditFilter(), limit=10, before_seq=None) == []
    await store.count_auth_failures({(60_000, "10.0.0.1", "ws_1"): 2})
    await store.count_auth_failures({(60_000, "10.0.0.1", "ws_1"): 3})
    assert await store.auth_failures(since=0) == [(60_000, "10.0.0.1", "ws_1", 5)]


# --- billing and usage ----------------------------------------------------------------------------

async def test_usage_is_ledgered_once_and_rolled_up(store: Store) -> None:
    await _workspace(store)
    await store.insert_job(_job("job_1"))
    await _agent(store, "agt_1", labels={"gpuModel": "H100"})
    assert await store.claim_job("agt_1", FREE, None, 1_000) is not None
    events = [StartedEvent(seq=1, jobId="job_1", epoch=1, at="1970-01-01T00:00:01Z"),
              UsageEvent(seq=2, jobId="job_1", epoch=1, cpuSeconds=2.0, gbSeconds=1.0, gpuSeconds=0.0)]
    await store.apply_events("agt_1", events, 10_000)
    await store.apply_events("agt_1", events, 11_000)  # a replay counts nothing
    totals = await store.usage_totals("ws_1", 0, HOUR)
    assert (totals.cpu_micros, totals.gb_micros) == (2_000_000, 1_000_000)
    job = await store.get_job("ws_1", "job_1")
    assert job is not None and job.cpu_seconds == 2.0 and job.attempts[0].cpu_seconds == 2.0
    rows = await store._read("SELECT gpu_model, recorded_at FROM usage_records")  # type: ignore[attr-defined]
    assert [(row["gpu_model"], row["recorded_at"]) for row in rows] == [("H100", 10_000)]
    tick = await store.meter_tick(2 * HOUR, BillingConfig())
    assert tick.rolled_up == 1
    assert await store.next_meter_tick() == 2 * HOUR + 60_000
    rolled = await store.usage_totals("ws_1", 0, HOUR)
    assert (rolled.cpu_micros, rolled.gb_micros) == (2_000_000, 1_000_000)  # the same, from the roll-up


async def test_limits_are_requested_and_checked(store: Store) -> None:
    await _workspace(store)
    limits = await store.request_limits("ws_1", soft_cap_usd=Decimal(10))
    assert (limits.soft_cap_usd, limits.hard_cap_usd, limits.pending) == (Decimal(10), None, True)  # next tick
    with pytest.raises(InvalidValue, match=r"^hardCapUsd \(5\) must not be below softCapUsd \(10\)$") as caught:
        await store.request_limits("ws_1", hard_cap_usd=Decimal(5))
    assert caught.value.field == "hardCapUsd"
    await store.meter_tick(HOUR, BillingConfig())
    applied = await store.get_limits("ws_1")
    assert (applied.soft_cap_usd, applied.pending) == (Decimal(10), False)
    assert not await store.hard_cap_reached("ws_1")
    assert await store.workspace_plan("ws_1") == "hobby"


# --- webhooks and their outbox --------------------------------------------------------------------

async def test_webhook_outbox_from_a_transition_to_a_delivery(store: Store) -> None:
    await _workspace(store)
    hook = WebhookRecord(id="whk_1", workspace_id="ws_1", url="https://example.com/h",
                         events=["job.transitioned", "job.terminal"], created_at=0)
    await store.insert_webhook(hook, "secret-1")
    assert await store.get_webhook("ws_1", "whk_1") == hook
    assert await store.get_webhook("ws_other", "whk_1") is None
    assert await store.rotate_webhook_secret("ws_1", "whk_1", "secret-2", 5) == 5 + 86_400_000
    target = await store.delivery_target("whk_1", 6)
    assert target is not None and target.secrets == ["secret-2", "secret-1"]  # newest first
    await store.insert_job(_job("job_1"))
    assert await store.cancel_job("ws_1", "job_1", 10) is not None  # QUEUED -> CANCELLED: terminal
    due = await store.claim_deliveries(10, 10, 30_000)
    assert [(d.event_type, d.ordering_key) for d in due] == [("job.transitioned", "job_1")]  # its queue's head
    assert await store.claim_deliveries(10, 10, 30_000) == []  # claimed: no other sender takes it
    body = json.loads(due[0].body)
    assert body["type"] == "job.transitioned" and body["data"]["state"] == "CANCELLED"
    await store.record_delivery_attempt(due[0], attempted_at=11, status_code=200, latency_ms=3, error=None,
                                        outcome="delivered", next_attempt_at=None, now=11)
    after = await store.claim_deliveries(11, 10, 30_000)
    assert [d.event_type for d in after] == ["job.terminal"]
    await store.record_delivery_attempt(after[0], attempted_at=12, status_code=500, latency_ms=3, error="boom",
                                        outcome="retry", next_attempt_at=100, now=12)
    assert await store.claim_deliveries(12, 10, 30_000) == []
    assert await store.next_delivery_due_after(12) == 100
    attempts = await store.list_webhook_attempts("ws_1", "whk_1", limit=10, before_id=None)
    assert [(a.status_code, a.delivery_state) for a in attempts] == [(500, "pending"), (200, "delivered")]
    assert await store.delete_webhook("ws_1", "whk_1", 13)
    assert await store.delivery_target("whk_1", 14) is None
    assert await store.claim_deliveries(1_000, 10, 30_000) == []  # cancelled with its webhook


# --- retries and dependencies (issue 16) ------------------------------------------------------

def _result(seq: int, job_id: str, epoch: int, state: JobState, exit_code: int | None,
            at_ms: int) -> list[StartedEvent | FinishedEvent]:
    at = from_millis(at_ms).isoformat().replace("+00:00", "Z")
    return [StartedEvent(seq=seq, jobId=job_id, epoch=epoch, at=at),
            FinishedEvent(seq=seq + 1, jobId=job_id, epoch=epoch, at=at, state=state, exitCode=exit_code,
                          runtimeMs=0)]


async def test_a_retried_job_waits_out_its_backoff_then_runs_under_a_new_epoch(store: Store) -> None:
    await _workspace(store)
    retry = {"attempts": 2, "on": ["FAILED"], "exitCodes": [], "backoffSeconds": 10}
    await store.insert_job(_job("job_1", retry=retry))
    await _agent(store, "agt_1")
    assert (await store.claim_job("agt_1", FREE, None, 1_000)) is not None
    await store.apply_events("agt_1", _result(1, "job_1", 1, JobState.FAILED, 3, 2_000), 2_000)
    job = await store.get_job("ws_1", "job_1")
    assert job is not None and (job.state, job.reason, job.not_before) == (JobState.QUEUED, "waiting_for_retry", 12_000)
    assert [(a.epoch, a.state, a.exit_code) for a in job.attempts] == [(1, JobState.FAILED, 3)]
    assert await store.next_claimable_at("ws_1", 2_000) == 12_000
    assert await store.claim_job("agt_1", FREE, None, 11_999) is None
    again = await store.claim_job("agt_1", FREE, None, 12_000)
    assert again is not None and (again.jobId, again.epoch) == ("job_1", 2)
    await store.apply_events("agt_1", _result(3, "job_1", 2, JobState.FAILED, 3, 13_000), 13_000)
    final = await store.get_job("ws_1", "job_1")
    assert final is not None and final.state == JobState.FAILED  # two failed attempts: no third


async def test_dependencies_hold_release_and_cancel_transitively(store: Store) -> None:
    await _workspace(store)
    await store.insert_job(_job("job_a", created=1))
    await store.insert_job(_job("job_b", created=2, depends_on=[("job_a", "succeeded")]))
    await store.insert_job(_job("job_c", created=3, depends_on=[("job_b", "succeeded")]))
    await store.insert_job(_job("job_d", created=4, depends_on=[("job_a", "failed")]))
    await _agent(store, "agt_1")
    first = await store.claim_job("agt_1", FREE, None, 10)
    assert first is not None and first.jobId == "job_a"
    assert await store.claim_job("agt_1", FREE, None, 10) is None
    await store.apply_events("agt_1", _result(1, "job_a", 1, JobState.FAILED, 1, 20), 20)
    for job_id in ("job_b", "job_c"):
        job = await store.get_job("ws_1", job_id)
        assert job is not None and (job.state, job.reason) == (JobState.CANCELLED, "dependency_failed")
    handler = await store.claim_job("agt_1", FREE, None, 30)
    assert handler is not None and handler.jobId == "job_d"
    listed = {job.id: job.depends_on for job in await store.list_jobs("ws_1", JobFilter(), limit=10, before_id=None)}
    assert listed["job_c"] == [("job_b", "succeeded")] and listed["job_a"] == []
