"""The agent protocol (``/agent/v0``): register, heartbeat, long-poll claim, job events.

Separate from the public API: its callers are agents holding agent tokens, it is not rate
limited, and its shapes live in ``common.protocol``.
"""

from __future__ import annotations

import contextlib

import trio
from pydantic import TypeAdapter, ValidationError
from quart import Blueprint, Response

from common import protocol
from common.clock import to_millis
from common.errors import BadRequest, Conflict, Unauthorized, Unprocessable
from common.event_checks import INVALID_EVENT, SEQUENCE_GAP
from common.ids import new_id
from common.protocol import (
    ClaimRequest,
    GoodbyeRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    JobEvent,
    RegisterRequest,
    RegisterResponse,
    ReleaseRequest,
)
from common.states import AgentState
from common.waiting import first_of
from coordinator.api.http import decode_json, json_body, raw_body, respond
from coordinator.auth import require_agent, require_registration_token
from coordinator.context import heartbeat_interval, services
from coordinator.notify import WaitingClaim
from coordinator.request_state import current
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
                                    heartbeatIntervalSeconds=heartbeat_interval(svc)), 201)


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
    answer = await svc.store.record_heartbeat(agent_id, beat, to_millis(svc.clock.now()))
    drain, stop = answer
    if beat.state != AgentState.READY:
        svc.notifier.end_waiting_claims(agent_id)  # it takes no new work: its waiting claim ends now
    if beat.loopLagMs is not None:
        svc.metrics.observe_agent_loop_lag(agent_id, beat.loopLagMs)
    if not drain and beat.labels is not None and answer.written:
        # Labels or capacity may have changed: jobs that did not fit before may fit now. A beat
        # that changed nothing wakes nobody: every claim of the workspace would run a claim
        # transaction for it, thousands each when a fleet of agents (re)starts together.
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
                                     heartbeatIntervalSeconds=heartbeat_interval(svc)))


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
    # This claim replaces any the agent still has waiting (it claims again when its free
    # capacity grows, without abandoning the older request): those answer 204 now.
    claims = svc.notifier.claim_signal(agent.agent_id)
    claims.fire()
    replaced = claims.snapshot()
    # Every pass tries the store first, so ``waitSeconds: 0`` still makes one real attempt.
    deadline = trio.current_time() + body.waitSeconds
    # The agent's labels and state, and whether anything is queued, in one statement.
    claimant = await svc.store.claim_look(agent.workspace_id, agent.agent_id)
    # What this claim can take, so that a new job wakes one claim that can run it (coordinator/notify.py).
    waiting_claim = WaitingClaim(claimant[0] if claimant is not None else {}, body.free.model_dump(),
                                 body.defaults.model_dump() if body.defaults else None)
    # An agent that takes no work now (draining, down) is not offered a new job's wake: it would
    # find nothing and settle it. It still wakes with every claim for other news.
    eligible = claimant is not None and claimant[1]
    registration = (svc.notifier.waiting_claim(agent.workspace_id, waiting_claim) if eligible
                    else contextlib.nullcontext(waiting_claim))
    # "Something is queued", read before the claim registered: the first pass may go straight
    # to the claim transaction on it (the claim looks for itself). "Nothing" is not trusted: a
    # job submitted between that read and the registration woke no claim of this request, so
    # the first pass then looks again, registered.
    queued_before = claimant is not None and claimant[2]
    with registration:
        while True:
            arrived = signal.snapshot()
            looked = waiting_claim.begin_pass()
            now = to_millis(svc.clock.now())
            # Nothing queued (the usual case once the queue is drained: an agent claims again as
            # soon as it is given a job): one index seek instead of a claim's write transaction.
            queued = queued_before or await svc.store.has_queued(agent.workspace_id)
            queued_before = False
            assignment = await svc.store.claim_job(agent.agent_id, body.free, body.defaults, now) if queued else None
            svc.notifier.settle(waiting_claim, looked, assignment.jobId if assignment is not None else None)
            if assignment is not None:
                current().dispatched_job_id = assignment.jobId  # for the dispatch-latency histogram
                return respond(assignment)
            # A retried job inside its backoff becomes claimable at a known time: look again then.
            due = await svc.store.next_claimable_at(agent.workspace_id, now) if queued else None
            wake = deadline if due is None else min(deadline, trio.current_time() + (due - now) / 1000)
            with trio.move_on_at(wake) as waiting:
                await first_of(arrived, replaced, waiting_claim.woken)
            if replaced.is_set() or (waiting.cancelled_caught and wake >= deadline):
                return Response("", status=204)


@blueprint.post(protocol.RELEASE_PATH)
async def release() -> Response:
    """An assignment the agent cannot use goes back to the queue now, and the waiting claims
    (this agent's included) are woken for it."""
    agent = await require_agent()
    body = await json_body(ReleaseRequest)
    svc = services()
    assert agent.agent_id is not None
    workspace_id = await svc.store.release_assignment(agent.agent_id, body.jobId, body.epoch,
                                                      to_millis(svc.clock.now()))
    if workspace_id is not None:
        svc.notifier.job_changed(body.jobId)
        svc.notifier.work_arrived(workspace_id)
    return Response("", status=204)


@blueprint.post(protocol.GOODBYE_PATH)
async def goodbye() -> Response:
    """A clean exit: the agent is DOWN at once, and anything still ASSIGNED to it is queued."""
    agent = await require_agent()
    await json_body(GoodbyeRequest)
    svc = services()
    assert agent.agent_id is not None
    requeued = await svc.store.agent_goodbye(agent.agent_id, to_millis(svc.clock.now()))
    for job_id in requeued:
        svc.notifier.job_changed(job_id)
    if requeued:
        svc.notifier.work_arrived(agent.workspace_id)
    svc.metrics.forget_agent(agent.agent_id)
    svc.notifier.end_waiting_claims(agent.agent_id)
    return Response("", status=204)


_EVENT = TypeAdapter(JobEvent)


async def _event_batch() -> tuple[list[JobEvent], dict[int, str]]:
    """The batch's events, each validated alone: an event whose content does not validate but
    whose ``seq`` is sound is refused by itself (``invalid_event``) and never holds back the
    stream; only a body that is not a batch of numbered events is a 400."""
    # A job's output may hold NUL bytes, which no store keeps: they become U+FFFD, never a 500
    # that would make the agent resend the batch forever.
    payload = decode_json(await raw_body(), replace_bad_text=True)
    raw = payload.get("events") if isinstance(payload, dict) and set(payload) == {"events"} else None
    if not isinstance(raw, list):
        raise BadRequest("the body must be {\"events\": [...]}", code="invalid_type", field="events")
    if len(raw) > protocol.MAX_EVENTS_PER_BATCH:
        raise Unprocessable(f"at most {protocol.MAX_EVENTS_PER_BATCH} events per batch", field="events")
    events: list[JobEvent] = []
    refused: dict[int, str] = {}
    for index, item in enumerate(raw):
        seq = item.get("seq") if isinstance(item, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise BadRequest("every event needs a positive integer seq", code="invalid_type",
                             field=f"events.{index}.seq")
        try:
            events.append(_EVENT.validate_python(item))
        except ValidationError:
            refused[seq] = INVALID_EVENT
    return events, refused


@blueprint.post(protocol.EVENTS_PATH)
async def events() -> Response:
    """Apply a batch of job events. Refused events are listed with their codes and audited;
    a batch whose first new event does not follow the last applied one (a gap) is ``409
    sequence_gap``, so that an agent backs off instead of resending it in a loop."""
    agent = await require_agent()
    batch, refused = await _event_batch()
    svc = services()
    assert agent.agent_id is not None
    result = await svc.store.apply_events(agent.agent_id, batch, to_millis(svc.clock.now()), refused=refused,
                                          request_id=current().request_id)
    seqs = [event.seq for event in batch] + list(refused)
    if result.rejected and all(r.code == SEQUENCE_GAP for r in result.rejected) \
            and all(seq > result.appliedThrough for seq in seqs):
        raise Conflict(f"events must continue from seq {result.appliedThrough + 1}; "
                       f"got {min(seqs)} (appliedThrough {result.appliedThrough})", code=SEQUENCE_GAP)
    for job_id in {event.jobId for event in batch}:
        svc.notifier.job_changed(job_id)
    if any(event.type == "handback" for event in batch):
        svc.notifier.work_arrived(agent.workspace_id)  # a handed-back job is queued again
    return respond(result)


