"""``/v0/arrays``: job arrays (issue 16). An array is submitted through ``POST /v0/jobs`` with
``array``; here it is read, listed, cancelled, and its tasks' logs read. Its tasks are jobs:
``GET /v0/jobs?arrayId=arr_...`` lists them, and every ``/v0/jobs/{id}`` route works on one."""

from __future__ import annotations

from quart import Blueprint, Response, request

from common.clock import to_millis
from common.errors import BadRequest, Conflict, NotFound, Unprocessable
from common.ids import new_id, new_ids
from common.models import MAX_ARRAY_MANIFEST_BYTES, JobArray, JobSubmit, Page
from coordinator.api.http import CURSOR, decode_cursor, query_limit, respond, split_page
from coordinator.api.registry import QueryParam, endpoint
from coordinator.auth import Principal, require_user
from coordinator.context import services
from coordinator.services.arrays import manifest_bytes
from coordinator.store.base import ArrayRecord, IdempotencyConflict, JobRecord
from coordinator.views import array_view

blueprint = Blueprint("arrays", __name__, url_prefix="/v0")

# The most a whole-array log read returns: the per-job retention, then a note to read by task.
ARRAY_LOG_LIMIT_BYTES = 8 * 1024 * 1024


async def submit_array(principal: Principal, submit: JobSubmit, template: JobRecord, *, key: str | None,
                       body_hash: str | None, window_ms: int) -> Response:
    """``POST /v0/jobs`` with ``array``: the array and its tasks, one transaction. ``template``
    is the job the manifest describes (id unused); answered ``201`` with the array."""
    assert submit.array is not None
    svc = services()
    count = submit.array.count
    if submit.array.maxParallel is not None and submit.array.maxParallel > count:
        raise Unprocessable(f"maxParallel ({submit.array.maxParallel}) cannot exceed count ({count})",
                            field="array.maxParallel")
    copies = count * manifest_bytes(template)
    if copies > MAX_ARRAY_MANIFEST_BYTES:
        # Each task stores its own copy: a 1 MiB manifest times 10,000 would be 10 GiB of rows.
        raise Unprocessable(f"{count} copies of this manifest ({copies} bytes) are over the "
                            f"{MAX_ARRAY_MANIFEST_BYTES} bytes an array may store: submit fewer tasks or a smaller "
                            "manifest (command, env)", code="invalid_value", field="array.count")
    now = svc.clock.now()
    array = ArrayRecord(id=new_id("arr", now), workspace_id=principal.workspace_id, count=count,
                        max_parallel=submit.array.maxParallel, created_at=template.created_at, name=submit.name,
                        submitted_by=template.submitted_by)
    try:
        stored = await svc.store.insert_array(array, template, new_ids("job", count, now), idempotency_key=key,
                                              request_hash=body_hash, idempotency_window_ms=window_ms)
    except IdempotencyConflict as exc:
        raise Conflict("this Idempotency-Key was used with a different body", code="idempotency_key_reused",
                       field="Idempotency-Key") from exc
    headers = {}
    if stored.id != array.id:
        headers["Idempotent-Replayed"] = "true"
    else:
        svc.notifier.work_arrived(principal.workspace_id)
    return respond(array_view(stored), 201, headers)


async def replayed_array(principal: Principal, key: str, body_hash: str | None, since: int) -> Response | None:
    """The earlier array of an Idempotency-Key still in its window, or None."""
    earlier = await services().store.find_idempotent_array(principal.workspace_id, key, since)
    if earlier is None:
        return None
    array, earlier_hash = earlier
    if earlier_hash != body_hash:
        raise Conflict("this Idempotency-Key was used with a different body", code="idempotency_key_reused",
                       field="Idempotency-Key")
    return respond(array_view(array), 201, {"Idempotent-Replayed": "true"})


async def _array_or_404(workspace_id: str, array_id: str) -> ArrayRecord:
    array = await services().store.get_array(workspace_id, array_id)
    if array is None:
        raise NotFound("no such job array", code="array_not_found")
    return array


@endpoint(blueprint, "GET", "/arrays/<array_id>", summary="Get a job array and its summary", tag="arrays",
          response=JobArray)
async def get_array(array_id: str) -> Response:
    principal = await require_user()
    return respond(array_view(await _array_or_404(principal.workspace_id, array_id)))


@endpoint(blueprint, "GET", "/arrays", summary="List job arrays, newest first", tag="arrays",
          response=Page[JobArray],
          query=(QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}), CURSOR))
async def list_arrays() -> Response:
    principal = await require_user()
    limit = query_limit()
    before = decode_cursor(request.args.get("cursor"))
    found = await services().store.list_arrays(principal.workspace_id, limit=limit + 1, before_id=before)
    page, cursor = split_page(found, limit)
    return respond(Page[JobArray](items=[array_view(array) for array in page], nextCursor=cursor))


@endpoint(blueprint, "POST", "/arrays/<array_id>:cancel", summary="Cancel every task of a job array (idempotent)",
          tag="arrays", response=JobArray, errors=(400, 401, 404, 429))
async def cancel_array(array_id: str) -> Response:
    principal = await require_user()
    svc = services()
    done = await svc.store.cancel_array(principal.workspace_id, array_id, to_millis(svc.clock.now()))
    if done is None:
        raise NotFound("no such job array", code="array_not_found")
    array, touched = done
    for agent_id, job_id in touched:
        if agent_id is not None:
            svc.notifier.order_cancel(agent_id, job_id)
        svc.notifier.job_changed(job_id)
    return respond(array_view(array))


@endpoint(blueprint, "GET", "/arrays/<array_id>/logs", summary="Read the logs of a job array's tasks",
          tag="arrays", content_type="text/plain",
          query=(QueryParam("index", {"type": "integer", "minimum": 0}, "Only this task's log"),
                 QueryParam("tail", {"type": "integer", "minimum": 0}, "Only the last N lines of each task")))
async def array_logs(array_id: str) -> Response:
    """Every task's log in index order, each after a ``==> task N (job_...) <==`` line (as
    ``tail`` prints several files), tasks without output left out; or one task's, ``?index=N``.
    At most ``ARRAY_LOG_LIMIT_BYTES``: past it, a last line says to read by task."""
    principal = await require_user()
    array = await _array_or_404(principal.workspace_id, array_id)
    index = _int_arg("index")
    tail = _int_arg("tail")
    if index is not None and index >= array.count:
        raise Unprocessable(f"index must be below the array's count ({array.count})", field="index")
    store = services().store
    parts: list[str] = []
    size = 0
    for task_index, task_id in await store.array_task_logs(principal.workspace_id, array.id, index):
        text = b"".join(chunk.data for chunk in await store.read_log(principal.workspace_id, task_id, 0)).decode(
            errors="replace")
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail:]) if tail else ""
        if index is None:
            text = f"==> task {task_index} ({task_id}) <==\n{text}"
            if text and not text.endswith("\n"):
                text += "\n"
        if size + len(text) > ARRAY_LOG_LIMIT_BYTES:
            parts.append(f"==> more tasks' logs past {ARRAY_LOG_LIMIT_BYTES} bytes: read them with ?index=N <==\n")
            break
        parts.append(text)
        size += len(text)
    return Response("".join(parts), content_type="text/plain; charset=utf-8")


def _int_arg(name: str) -> int | None:
    text = request.args.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an integer", code="invalid_type", field=name) from exc
    if value < 0:
        raise Unprocessable(f"{name} must be zero or more", field=name)
    return value

