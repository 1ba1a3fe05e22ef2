"""The agent protocol (``/agent/v0``): register, heartbeat, long-poll claim, job events.

Separate from the public API: its callers are agents holding agent tokens, it is not rate
limited, and its shapes live in ``common.protocol``.
"""

from __future__ import annotations

import trio
from quart import Blueprint, Response

from common import protocol
from common.clock import to_millis
from common.errors import Unauthorized
from common.ids import new_id
from common.protocol import (
    ClaimRequest,
    EventBatch,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
)
from common.states import AgentState
from coordinator.api.http import json_body, respond
from coordinator.auth import require_agent, require_registration_token
from coordinator.context import services
from coordinator.store.base import AgentRecord, TokenRecord
from coordinator.tokens import TokenKind, generate_token, hash_token

blueprint = Blueprint("agent_protocol", __name__)


@blueprint.post(protocol.REGISTER_PATH)
async def register() -> Response:
    registration = await require_registration_token()
    body = await json_body(RegisterRequest)
    svc = services()
    now = svc.clock.now()
    agent_id = new_id("agt", now)
    secret = generate_token(TokenKind.AGENT)
    agent = AgentRecord(
        id=agent_id, workspace_id=registration.workspace_id, name=body.name, state=AgentState.READY,
        labels=body.labels, capacity=body.capacity.model_dump(), version=body.version,
        registered_at=to_millis(now), last_heartbeat_at=to_millis(now),
    )
    token = TokenRecord(
        id=new_id("tok", now), kind=TokenKind.AGENT.value, token_hash=hash_token(secret),
        workspace_id=registration.workspace_id, user_id=None, agent_id=agent_id, name=f"agent {body.name}",
        created_at=to_millis(now),
    )
    await svc.store.register_agent(agent, token)
    return respond(RegisterResponse(agentId=agent_id, agentToken=secret, workspaceId=registration.workspace_id,
                                    heartbeatIntervalSeconds=svc.settings.heartbeat_interval_seconds), 201)


@blueprint.post(protocol.HEARTBEAT_PATH)
async def heartbeat() -> Response:
    """Record the beat at once; answer at once, or (``waitSeconds`` > 0) when there is news.

    News is an order the agent has not heard: a cancel fired since its last answer, or a drain
    flag that disagrees with the state it reports. Orders it already heard (a job it is still
    stopping) are repeated in every answer but do not cut the hold short, so the agent cannot
    spin. The hold ends early when the agent is deleted (then ``401``).
    """
    agent = await require_agent()
    beat = await json_body(HeartbeatRequest)
    svc = services()
    agent_id = agent.agent_id
    assert agent_id is not None
    changed = svc.notifier.agent_signal(agent_id).snapshot()
    drain, stop = await svc.store.record_heartbeat(agent_id, beat, to_millis(svc.clock.now()))
    if beat.loopLagMs is not None:
        svc.metrics.observe_agent_loop_lag(agent_id, beat.loopLagMs)
    if not drain and beat.labels is not None:
        # Labels or capacity may have changed: jobs that did not fit before may fit now.
        svc.notifier.work_arrived(agent.workspace_id)
    if beat.waitSeconds > 0 and not _news(svc.notifier.has_pending_cancels(agent_id), drain, beat.state):
        with trio.move_on_after(beat.waitSeconds):
            await changed.wait()
        orders = await svc.store.agent_orders(agent_id, beat.runningJobs)
        if orders is None:
            raise Unauthorized("this agent was deleted", code="invalid_token")
        drain, stop = orders
    cancels = list(dict.fromkeys([*stop, *sorted(svc.notifier.take_pending_cancels(agent_id))]))
    return respond(HeartbeatResponse(drain=drain, cancelJobs=cancels,
                                     heartbeatIntervalSeconds=svc.settings.heartbeat_interval_seconds))


def _news(pending_cancels: bool, drain: bool, reported: AgentState) -> bool:
    draining = reported in (AgentState.DRAINING, AgentState.DRAINED)
    return pending_cancels or drain != draining


@blueprint.post(protocol.CLAIM_PATH)
async def claim() -> Response:
    """Long-poll: answer at once with a job, or wait until work arrives or ``waitSeconds`` pass."""
    agent = await require_agent()
    body = await json_body(ClaimRequest)
    svc = services()
    assert agent.agent_id is not None
    signal = svc.notifier.work_signal(agent.workspace_id)
    # Every pass tries the store first, so ``waitSeconds: 0`` still makes one real attempt.
    deadline = trio.current_time() + body.waitSeconds
    while True:
        arrived = signal.snapshot()
        assignment = await svc.store.claim_job(agent.agent_id, body.free, body.defaults, to_millis(svc.clock.now()))
        if assignment is not None:
            return respond(assignment)
        with trio.move_on_at(deadline) as waiting:
            await arrived.wait()
        if waiting.cancelled_caught:
            return Response("", status=204)


@blueprint.post(protocol.EVENTS_PATH)
async def events() -> Response:
    agent = await require_agent()
    batch = await json_body(EventBatch)
    svc = services()
    assert agent.agent_id is not None
    result = await svc.store.apply_events(agent.agent_id, list(batch.events), to_millis(svc.clock.now()))
    for job_id in {event.jobId for event in batch.events}:
        svc.notifier.job_changed(job_id)
    if any(event.type == "handback" for event in batch.events):
        svc.notifier.work_arrived(agent.workspace_id)  # a handed-back job is queued again
    return respond(result)
