"""``/v0/jobs``: submit, read, list, cancel, logs (plain and Server-Sent Events)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import trio
from quart import Blueprint, Response, request

from common.clock import millis_to_rfc3339, to_millis
from common.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from common.ids import new_id
from common.models import (
    DEFAULT_PRIORITY,
    LABEL_KEY,
    LABEL_KEY_PATTERN,
    Job,
    JobCreated,
    JobSubmit,
    Page,
    parse_body,
    reserved_env_name,
)
from common.states import JobState
from coordinator import audit
from coordinator.api.arrays import replayed_array, submit_array
from coordinator.api.billing import refuse_past_hard_cap
from coordinator.api.http import (
    CURSOR,
    decode_cursor,
    decode_json,
    query_limit,
    query_list,
    query_time,
    raw_body,
    respond,
    split_page,
)
from coordinator.api.registry import QueryParam, endpoint
from coordinator.auth import Principal, Role, caller_token, require_user, still_admitted
from coordinator.context import Services, services
from coordinator.request_state import current
from coordinator.scheduler import queued_reason
from coordinator.services.arrays import ARRAY_MAX_PARALLEL
from coordinator.services.dependencies import UnknownDependency
from coordinator.services.retries import RetryPolicy
from coordinator.store.base import IdempotencyConflict, JobFilter, JobRecord, TokenRecord
from coordinator.store.sqlite import request_hash
from coordinator.views import job_view

blueprint = Blueprint("jobs", __name__, url_prefix="/v0")

_LIST_QUERY = (
    QueryParam("state", {"type": "string", "enum": [s.value for s in JobState]}, "Repeatable", True),
    QueryParam("label", {"type": "string", "pattern": LABEL_KEY_PATTERN.removesuffix("$") + "="},
               "key=value; repeatable, all must match", True),
    QueryParam("createdAfter", {"type": "string", "format": "date-time"}),
    QueryParam("createdBefore", {"type": "string", "format": "date-time"}),
    QueryParam("arrayId", {"type": "string"}, "Only the tasks of this job array"),
    QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
    CURSOR,
)


@endpoint(blueprint, "POST", "/jobs", summary="Submit a job (or, with array, a job array: answered with the JobArray)",
          tag="jobs", body=JobSubmit,
          response=JobCreated, status=201, errors=(400, 401, 403, 409, 413, 422, 429))
async def submit_job() -> Response:
    principal = await require_user()
    raw = await raw_body()
    submit = parse_body(JobSubmit, decode_json(raw))
    reserved = reserved_env_name(submit.env)
    if reserved is not None:
        # 400, as the contract asks: the agent sets these itself for the job's isolation.
        raise BadRequest(f"env.{reserved}: set by the agent for the job's isolation; a job cannot override it",
                         code="reserved_env", field=f"env.{reserved}")
    svc = services()
    now = svc.clock.now()
    key = current().headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise BadRequest("Idempotency-Key must be 1 to 255 characters", code="invalid_header", field="Idempotency-Key")
    body_hash = request_hash(submit.model_dump_json().encode()) if key else None
    window_ms = svc.settings.idempotency_window_seconds * 1000
    if key is not None:
        # A retry of a job that exists is answered with it, even past a hard cap reached since.
        earlier = await svc.store.find_idempotent_job(principal.workspace_id, key, to_millis(now) - window_ms)
        if earlier is not None:
            earlier_job, earlier_hash = earlier
            if earlier_hash != body_hash:
                raise Conflict("this Idempotency-Key was used with a different body", code="idempotency_key_reused",
                               field="Idempotency-Key")
            return respond(_created(earlier_job), 201, {"Idempotent-Replayed": "true"})
        # Also for a single job: the key may be an array's (then the bodies differ: 409).
        replayed = await replayed_array(principal, key, body_hash, to_millis(now) - window_ms)
        if replayed is not None:
            return replayed
    # The hard cap and the agents (for the queue reason) in one read: a round trip on PostgreSQL.
    hard_cap_reached, agents = await svc.store.submission_state(principal.workspace_id)
    refuse_past_hard_cap(hard_cap_reached)
    await _check_priority(principal, submit.priority)
    resources = submit.resources.model_dump(exclude_none=True) if submit.resources else None
    # Said at once when no agent can take it; "waiting_for_capacity" only after a tick (a free
    # agent may claim it in the next moment).
    reason = queued_reason(submit.labels, resources, agents, held=False, waited=False)
    record = JobRecord(
        id=new_id("job", now),
        workspace_id=principal.workspace_id,
        state=JobState.QUEUED,
        command=submit.command,
        name=submit.name,
        labels=submit.labels,
        resources=resources,
        env=submit.env,
        timeout_seconds=submit.timeoutSeconds,
        created_at=to_millis(now),
        reason=reason,
        priority=submit.priority,
        retry=_retry_policy(submit).as_dict() if submit.retry is not None else None,
        depends_on=[(dependency.jobId, dependency.condition) for dependency in submit.dependsOn],
        submitted_by=principal.actor,
    )
    if submit.array is not None:
        if submit.dependsOn:
            raise Unprocessable("dependsOn is not supported with array yet: make each task's dependents depend "
                                "on the tasks (jobs) instead", code="invalid_value", field="dependsOn")
        return await submit_array(principal, submit, record, key=key, body_hash=body_hash, window_ms=window_ms)
    try:
        # The audit row commits with the job: one trip through the writer, and a 201 is never
        # answered for a submission whose audit row could still be lost.
        stored = await svc.store.insert_job(
            record,
            idempotency_key=key,
            request_hash=body_hash,
            idempotency_window_ms=window_ms,
            audit=audit.request_record(now, 201),
        )
        audit.mark_written()
    except IdempotencyConflict as exc:
        raise Conflict("this Idempotency-Key was used with a different body", code="idempotency_key_reused",
                       field="Idempotency-Key") from exc
    except UnknownDependency as exc:
        # The same answer for a job that does not exist and one of another workspace.
        raise Unprocessable(f"dependsOn.{exc.index}.jobId: no job {exc.job_id} in this workspace",
                            code="dependency_not_found", field=f"dependsOn.{exc.index}.jobId") from exc
    headers = {}
    if stored.id != record.id:
        headers["Idempotent-Replayed"] = "true"
    else:
        # One waiting claim that can run it is woken, not every claim (coordinator/notify.py).
        svc.notifier.job_submitted(principal.workspace_id, stored.id, stored.labels, stored.resources)
    return respond(_created(stored), 201, headers)


def _created(job: JobRecord) -> JobCreated:
    """The answer to a submission: the three fields of the job's view (``job_view``) it holds,
    made without the whole view (its attempts, usage and nested models are not sent)."""
    return JobCreated(id=job.id, state=job.state, createdAt=millis_to_rfc3339(job.created_at) or "")


def _retry_policy(submit: JobSubmit) -> RetryPolicy:
    assert submit.retry is not None
    spec = submit.retry
    return RetryPolicy(attempts=spec.attempts, on=frozenset(JobState(state) for state in spec.on),
                       exit_codes=frozenset(spec.exitCodes), backoff_seconds=spec.backoffSeconds)


async def _check_priority(principal: Principal, priority: int) -> None:
    """A member may give at most the workspace's ``maxMemberPriority``; admins and owners any."""
    if principal.role is not None and principal.role >= Role.ADMIN:
        return
    workspace = await services().store.get_workspace(principal.workspace_id)
    ceiling = workspace.max_member_priority if workspace is not None else DEFAULT_PRIORITY
    if priority > ceiling:
        raise Forbidden(f"priority {priority} is above this workspace's maximum for members ({ceiling}); "
                        "an admin can raise maxMemberPriority", code="priority_above_member_maximum",
                        field="priority")


async def _job_or_404(workspace_id: str, job_id: str) -> JobRecord:
    job = await services().store.get_job(workspace_id, job_id)
    if job is None:
        raise NotFound("no such job", code="job_not_found")
    return job


@endpoint(blueprint, "GET", "/jobs/<job_id>", summary="Get a job", tag="jobs", response=Job)
async def get_job(job_id: str) -> Response:
    principal = await require_user()
    job = await _job_or_404(principal.workspace_id, job_id)
    return respond((await queue_views(principal.workspace_id, [job]))[0])


async def queue_views(workspace_id: str, jobs: list[JobRecord]) -> list[Job]:
    """The views of ``jobs`` with what only the queue knows (issue 16): a QUEUED job's
    ``position``, and ``reason`` ``array_max_parallel`` while its array is at its limit."""
    store = services().store
    positions = await store.queue_positions(workspace_id, jobs)
    full = await store.arrays_at_limit(workspace_id, {job.array_id for job in jobs
                                                      if job.state == JobState.QUEUED and job.array_id is not None})
    views = []
    for job in jobs:
        view = job_view(job, positions.get(job.id))
        if job.state == JobState.QUEUED and job.array_id in full:
            view = view.model_copy(update={"reason": ARRAY_MAX_PARALLEL})
        views.append(view)
    return views


def _job_filter() -> JobFilter:
    states = []
    for text in query_list("state"):
        try:
            states.append(JobState(text))
        except ValueError as exc:
            raise Unprocessable(f"unknown state {text!r}", field="state") from exc
    labels = []
    for pair in query_list("label"):
        key, sep, value = pair.partition("=")
        # Only a key a label can have: the key becomes a JSON path in the store's query, where a
        # quote or a NUL was an SQLite error (a 500).
        if not sep or not LABEL_KEY.match(key):
            raise BadRequest("label filters look like key=value, with a label key such as gpuModel",
                             code="invalid_type", field="label")
        labels.append((key, value))
    array_id = request.args.get("arrayId")
    return JobFilter(tuple(states), tuple(labels), query_time("createdAfter"), query_time("createdBefore"),
                     array_id=array_id)


@endpoint(blueprint, "GET", "/jobs", summary="List jobs, newest first", tag="jobs", response=Page[Job],
          query=_LIST_QUERY)
async def list_jobs() -> Response:
    principal = await require_user()
    limit = query_limit()
    before = decode_cursor(request.args.get("cursor"))
    jobs = await services().store.list_jobs(principal.workspace_id, _job_filter(), limit=limit + 1, before_id=before)
    page, cursor = split_page(jobs, limit)
    return respond(Page[Job](items=await queue_views(principal.workspace_id, page), nextCursor=cursor))


@endpoint(blueprint, "POST", "/jobs/<job_id>:cancel", summary="Cancel a job (idempotent)", tag="jobs",
          response=Job, errors=(400, 401, 404, 429))
async def cancel_job(job_id: str) -> Response:
    principal = await require_user()
    svc = services()
    now = to_millis(svc.clock.now())
    job = await svc.store.cancel_job(principal.workspace_id, job_id, now)
    if job is None:
        raise NotFound("no such job", code="job_not_found")
    if job.agent_id is not None and (
        (job.state == JobState.RUNNING and job.cancel_requested)
        or (job.state == JobState.CANCELLED and job.finished_at == now)
    ):
        # Running (or assigned, and perhaps already started): its agent stops the process.
        # Wake the agent's held heartbeat so that it hears of it now, not at its next beat.
        svc.notifier.order_cancel(job.agent_id, job.id)
    svc.notifier.job_changed(job_id)
    return respond(job_view(job))


@endpoint(blueprint, "GET", "/jobs/<job_id>/logs", summary="Read or follow a job's log", tag="jobs",
          content_type="text/plain", alt_content_types=("text/event-stream",),
          query=(QueryParam("tail", {"type": "integer", "minimum": 0}, "Only the last N lines"),
                 QueryParam("follow", {"type": "boolean"}, "Stream as text/event-stream"),
                 QueryParam("offset", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                            "With follow: resume at this byte offset (as Last-Event-ID does)")))
async def job_logs(job_id: str) -> Response:
    principal = await require_user()
    job = await _job_or_404(principal.workspace_id, job_id)
    if request.args.get("follow", "false").lower() in {"1", "true", "yes"}:
        start = _resume_offset()
        response = Response(_follow(services(), principal.workspace_id, job.id, start, caller_token()),
                            content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None
        return response
    chunks = await services().store.read_log(principal.workspace_id, job.id, 0)
    text = b"".join(chunk.data for chunk in chunks).decode(errors="replace")
    tail = request.args.get("tail")
    if tail is not None:
        try:
            lines = int(tail)
        except ValueError as exc:
            raise BadRequest("tail must be an integer", code="invalid_type", field="tail") from exc
        if lines < 0:
            raise Unprocessable("tail must be zero or more", field="tail")
        kept = text.splitlines(keepends=True)
        text = "".join(kept[-lines:]) if lines else ""
    return Response(text, content_type="text/plain; charset=utf-8")


def _resume_offset() -> int:
    text = request.headers.get("Last-Event-ID") or request.args.get("offset") or "0"
    try:
        offset = int(text)
    except ValueError as exc:
        raise BadRequest("Last-Event-ID must be a byte offset this API sent", code="invalid_header",
                         field="Last-Event-ID") from exc
    if not 0 <= offset < 2**63:
        raise Unprocessable("Last-Event-ID must be a byte offset between 0 and 2^63 - 1", field="Last-Event-ID")
    return offset


# How often a followed log re-checks its caller's credential and membership (at the latest at the
# next keep-alive when the log is quiet).
_RECHECK_SECONDS = 1.0


async def _follow(svc: Services, workspace_id: str, job_id: str, offset: int,
                  caller: TokenRecord) -> AsyncIterator[bytes]:
    """SSE: each ``log`` event's id is the byte offset just past its data, so resuming with
    ``Last-Event-ID: N`` continues at byte N. Data is the chunk as a JSON string, which keeps
    carriage returns and every other byte-level detail that SSE's line framing would lose.
    It runs after the handler has returned, outside the app context: hence ``svc`` is passed.
    A job may run for days: the stream ends once ``caller`` no longer admits its user here."""
    keepalive = svc.settings.sse_keepalive_seconds
    checked = trio.current_time()
    with svc.notifier.watch_job(job_id) as signal:
        while True:
            changed = signal.snapshot()
            if trio.current_time() - checked >= _RECHECK_SECONDS:
                checked = trio.current_time()
                if not await still_admitted(svc.store, caller, workspace_id, to_millis(svc.clock.now())):
                    return
            job = await svc.store.get_job(workspace_id, job_id)
            if job is None:
                return
            for chunk in await svc.store.read_log(workspace_id, job_id, offset):
                offset = chunk.offset + len(chunk.data)
                text = json.dumps(chunk.data.decode(errors="replace"))
                yield f"event: log\nid: {offset}\ndata: {text}\n\n".encode()
            if job.state.is_terminal and offset >= job.log_size:
                end = json.dumps({"state": job.state.value, "exitCode": job.exit_code})
                yield f"event: end\nid: {offset}\ndata: {end}\n\n".encode()
                return
            with trio.move_on_after(keepalive) as waited:
                await changed.wait()
            if waited.cancelled_caught:
                yield b": keep-alive\n\n"
