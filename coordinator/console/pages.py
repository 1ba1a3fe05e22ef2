"""The console's routes under ``/ui/``: server-rendered pages, fragments for the live parts,
and form handlers that turn a form into one ``/v0`` call (``client.call_api``).

Pages are Jinja templates with autoescaping, so whatever a job or a user controls (log text,
labels, names, URLs) reaches the page as text. The only scripts are ``static/console.js``,
allowed by a Content-Security-Policy that forbids inline script. Lists are read one API page
at a time (50 rows, a cursor for the next), so a page costs the same with 100,000 jobs.
"""

from __future__ import annotations

import calendar
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from quart import Blueprint, Response, current_app, redirect, render_template, request

from common.errors import BadRequest, PayloadTooLarge
from common.states import AgentState, JobState
from coordinator.auth import SESSION_COOKIE, WORKSPACE_COOKIE
from coordinator.billing import INVOICING_PLANS
from coordinator.console.charts import bar_chart, cap_gauge, format_quantity
from coordinator.console.client import ApiResult, call_api
from coordinator.tokens import TokenKind, kind_of

HERE = Path(__file__).parent
blueprint = Blueprint("console", __name__, url_prefix="/ui", template_folder=str(HERE / "templates"),
                      static_folder=str(HERE / "static"), static_url_path="/static")

SIGNIN_COOKIE = "tanvrit_signin"
PAGE_SIZE = 50

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@blueprint.before_request
async def bound_forms() -> None:
    """The console's forms are held to the API's body limit (``max_body_bytes``), not to the
    app's much larger drain limit (Quart reads a urlencoded form whole): the sign-in form takes
    posts from anyone. Browsers send a form with its Content-Length."""
    if request.method != "POST":
        return
    limit = current_app.extensions["tanvrit"].settings.max_body_bytes
    if request.content_length is None:
        raise BadRequest("send the form with a Content-Length", code="length_required", field="Content-Length")
    if request.content_length > limit:
        raise PayloadTooLarge(f"the request body is over {limit // 1024} KiB")


@blueprint.after_request
async def security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not request.path.startswith("/ui/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.app_template_filter("quantity")
def quantity_filter(value: float | None) -> str:
    return "" if value is None else format_quantity(float(value))


@blueprint.app_template_filter("when")
def when_filter(value: str | None) -> str:
    """RFC 3339 → ``2026-04-26 09:13:21Z``: shorter, still UTC and unambiguous."""
    if not value:
        return ""
    return value.replace("T", " ").split(".")[0].removesuffix("Z") + "Z"


@dataclass
class Viewer:
    """Who the session is, as the API reports it; drives what the page offers (the API decides)."""

    user_id: str
    workspace_id: str
    workspace_name: str
    role: str
    plan: str
    csrf: str
    workspaces: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_admin(self) -> bool:
        return self.role in {"admin", "owner"}


class SignedOut(Exception):
    """No live session: the handler answers with the sign-in page."""


async def load_viewer() -> Viewer:
    if SESSION_COOKIE not in request.cookies:
        raise SignedOut
    me = await call_api("GET", "/v0/sessions/current")
    if not me.ok:
        raise SignedOut
    spaces = await call_api("GET", "/v0/workspaces", params={"limit": 100})
    items: list[dict[str, Any]] = spaces.body.get("items", []) if spaces.ok else []
    chosen = request.cookies.get(WORKSPACE_COOKIE)
    active = next((w for w in items if w["id"] == chosen), None) or next(
        (w for w in items if w["id"] == me.body["workspaceId"]), None) or next(iter(items), None)
    if active is None:
        raise SignedOut
    return Viewer(user_id=me.body["userId"], workspace_id=active["id"], workspace_name=active["name"],
                  role=active["role"], plan=active["plan"], csrf=me.body["csrfToken"], workspaces=items)


async def api(viewer: Viewer, method: str, path: str, *, params: Any = None, body: Any = None,
              csrf: str | None = None) -> ApiResult:
    return await call_api(method, path, params=params, body=body, csrf=csrf, workspace=viewer.workspace_id)


async def page(template: str, viewer: Viewer, status: int = 200, **context: Any) -> Response:
    html = await render_template(template, viewer=viewer, nav=template.removesuffix(".html"), **context)
    return Response(html, status=status, content_type="text/html; charset=utf-8")


def to_sign_in() -> Response:
    response = redirect("/ui/sign-in", 303)
    return response  # type: ignore[return-value]


def back(location: str) -> Response:
    return redirect(location, 303)  # type: ignore[return-value]


async def form() -> dict[str, str]:
    data = await request.form
    return {key: data.get(key, "") for key in data}


# --- sign-in ---------------------------------------------------------------------------------

@blueprint.get("")
async def root_without_slash() -> Response:
    return back("/ui/")


@blueprint.get("/")
async def home() -> Response:
    return back("/ui/fleet" if SESSION_COOKIE in request.cookies else "/ui/sign-in")


async def _sign_in_page(error: str | None = None, status: int = 200) -> Response:
    # Login CSRF: the form's value must match a cookie only this origin could have set.
    nonce = secrets.token_urlsafe(24)
    html = await render_template("sign_in.html", viewer=None, nav="sign_in", nonce=nonce, error=error)
    response = Response(html, status=status, content_type="text/html; charset=utf-8")
    response.set_cookie(SIGNIN_COOKIE, nonce, path="/ui/sign-in", httponly=True, samesite="Strict",
                        secure=request.scheme == "https", max_age=3600)
    return response


@blueprint.get("/sign-in")
async def sign_in_form() -> Response:
    return await _sign_in_page()


@blueprint.post("/sign-in")
async def sign_in() -> Response:
    fields = await form()
    nonce = request.cookies.get(SIGNIN_COOKIE)
    if not nonce or not secrets.compare_digest(nonce, fields.get("nonce", "")):
        return await _sign_in_page("the sign-in form expired; try again", 400)
    credential = fields.get("credential", "").strip()
    if not credential:
        return await _sign_in_page("paste a personal access token or an invitation code", 422)
    key = "invitationCode" if kind_of(credential) == TokenKind.INVITATION else "pat"
    result = await call_api("POST", "/v0/sessions", body={key: credential})
    if not result.ok:
        return await _sign_in_page(result.error, result.status)
    response = back("/ui/fleet")
    for cookie in result.headers.get_list("set-cookie"):
        response.headers.add("Set-Cookie", cookie)
    response.delete_cookie(SIGNIN_COOKIE, path="/ui/sign-in")
    response.delete_cookie(WORKSPACE_COOKIE, path="/")
    return response


@blueprint.post("/sign-out")
async def sign_out() -> Response:
    fields = await form()
    result = await call_api("DELETE", "/v0/sessions/current", csrf=fields.get("csrf", ""))
    response = back("/ui/sign-in")
    for cookie in result.headers.get_list("set-cookie"):
        response.headers.add("Set-Cookie", cookie)
    if result.status == 401:  # already over: clear the dead cookie anyway
        response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@blueprint.post("/workspace")
async def choose_workspace() -> Response:
    """Remember the active workspace (not a secret: the API checks membership on every call).
    CSRF-checked like every change, so another site cannot switch it under the user."""
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    fields = await form()
    if not secrets.compare_digest(fields.get("csrf", ""), viewer.csrf):
        return Response("the form's CSRF token is missing or stale; reload the page", status=403,
                        content_type="text/plain; charset=utf-8")
    # Back to the page the switch was made on (pages send no Referer: their policy is no-referrer).
    target = fields.get("next", "")
    # A path of this console only: never another host, and nothing that is not a printable
    # character (a CR LF would break the Location header).
    safe = target.startswith("/ui/") and not target.startswith("/ui//") and target.isprintable()
    response = back(target if safe else "/ui/")
    # Path "/" so the browser's own /v0 calls (the log stream) act in the same workspace.
    response.set_cookie(WORKSPACE_COOKIE, fields.get("workspace", ""), path="/", httponly=True,
                        samesite="Strict", secure=request.scheme == "https")
    return response


# --- fleet ------------------------------------------------------------------------------------

async def _agents(viewer: Viewer) -> tuple[ApiResult, list[dict[str, Any]]]:
    params = {"limit": PAGE_SIZE, **({"cursor": request.args["cursor"]} if request.args.get("cursor") else {})}
    result = await api(viewer, "GET", "/v0/agents", params=params)
    return result, (result.body.get("items", []) if result.ok else [])


@dataclass
class InUse:
    """What an agent's assigned and running jobs asked for. A job that declared no size runs
    with the agent's defaults, which the API does not report: it is counted in ``unsized``."""

    cpus: float = 0.0
    memory_mb: int = 0
    gpus: int = 0
    unsized: int = 0


MAX_RUNNING_READ = 200


async def _in_use(viewer: Viewer) -> tuple[dict[str, InUse], bool]:
    """Per agent, from one page of the workspace's assigned and running jobs (one API call,
    whatever the fleet's size); the flag says there were more than one page holds."""
    result = await api(viewer, "GET", "/v0/jobs", params={"state": ["ASSIGNED", "RUNNING"], "limit": MAX_RUNNING_READ})
    used: dict[str, InUse] = {}
    if not result.ok:
        return used, False
    for job in result.body.get("items", []):
        if not job.get("agentId"):
            continue
        entry = used.setdefault(job["agentId"], InUse())
        resources = job.get("resources") or {}
        if resources.get("cpus") is None and resources.get("memoryMb") is None:
            entry.unsized += 1
        entry.cpus += resources.get("cpus") or 0.0
        entry.memory_mb += resources.get("memoryMb") or 0
        entry.gpus += resources.get("gpus") or 0
    return used, result.body.get("nextCursor") is not None


@blueprint.get("/fleet")
async def fleet(error: str | None = None, status: int = 200) -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    result, agents = await _agents(viewer)
    in_use, partial = await _in_use(viewer)
    counts = {state.value: sum(1 for a in agents if a["state"] == state.value) for state in AgentState}
    return await page("fleet.html", viewer, status, agents=agents, counts=counts, in_use=in_use, partial=partial,
                      error=error or (None if result.ok else result.error),
                      next_cursor=result.body.get("nextCursor") if result.ok else None)


@blueprint.get("/fleet/rows")
async def fleet_rows() -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return Response("", status=401)
    _, agents = await _agents(viewer)
    in_use, partial = await _in_use(viewer)
    return await page("_agent_rows.html", viewer, agents=agents, in_use=in_use, partial=partial)


@blueprint.post("/agents/<agent_id>/<action>")
async def agent_action(agent_id: str, action: str) -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    fields = await form()
    calls = {"drain": ("POST", f"/v0/agents/{agent_id}:drain"), "resume": ("POST", f"/v0/agents/{agent_id}:resume"),
             "remove": ("DELETE", f"/v0/agents/{agent_id}")}
    if action not in calls:
        return await fleet(error=f"unknown action {action!r}", status=404)
    method, path = calls[action]
    result = await api(viewer, method, path, csrf=fields.get("csrf", ""))
    if not result.ok:
        return await fleet(error=result.error, status=result.status)
    return back("/ui/fleet")


# --- jobs -------------------------------------------------------------------------------------

def _local_time(text: str) -> str | None:
    """A ``datetime-local`` input (taken as UTC) → RFC 3339."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return text  # let the API say what is wrong with it


def _job_query() -> tuple[dict[str, Any], dict[str, str]]:
    """The API query for the Jobs filters in the page's URL, and the filters to show back."""
    shown = {name: request.args.get(name, "") for name in ("state", "label", "after", "before", "cursor")}
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    if shown["state"]:
        params["state"] = shown["state"]
    if shown["label"]:
        params["label"] = [part.strip() for part in shown["label"].split(",") if part.strip()]
    for name, api_name in (("after", "createdAfter"), ("before", "createdBefore")):
        converted = _local_time(shown[name])
        if converted:
            params[api_name] = converted
    if shown["cursor"]:
        params["cursor"] = shown["cursor"]
    return params, shown


async def _jobs(viewer: Viewer) -> tuple[ApiResult, list[dict[str, Any]], dict[str, str]]:
    params, shown = _job_query()
    result = await api(viewer, "GET", "/v0/jobs", params=params)
    return result, (result.body.get("items", []) if result.ok else []), shown


@blueprint.get("/jobs")
async def jobs(error: str | None = None, status: int = 200, submitted: dict[str, str] | None = None) -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    result, items, shown = await _jobs(viewer)
    next_cursor = result.body.get("nextCursor") if result.ok else None
    filters = {k: v for k, v in shown.items() if k != "cursor" and v}
    return await page("jobs.html", viewer, status, jobs=items, shown=shown, states=[s.value for s in JobState],
                      error=error or (None if result.ok else result.error), submitted=submitted or {},
                      rows_url="/ui/jobs/rows?" + urlencode(filters),
                      next_url=("/ui/jobs?" + urlencode({**filters, "cursor": next_cursor})) if next_cursor else None,
                      first_page=not shown["cursor"])


@blueprint.get("/jobs/rows")
async def job_rows() -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return Response("", status=401)
    _, items, _ = await _jobs(viewer)
    return await page("_job_rows.html", viewer, jobs=items)


def _parse_labels(text: str) -> dict[str, str]:
    labels = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if sep and key:
            labels[key.strip()] = value.strip()
    return labels


@blueprint.post("/jobs")
async def submit_job() -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    fields = await form()
    body: dict[str, Any] = {"type": "COMMAND", "command": fields.get("command", "")}
    if fields.get("name"):
        body["name"] = fields["name"]
    if fields.get("labels"):
        body["labels"] = _parse_labels(fields["labels"])
    if fields.get("timeout"):
        try:
            body["timeoutSeconds"] = int(fields["timeout"])
        except ValueError:
            return await jobs(error="the timeout must be a whole number of seconds", status=422, submitted=fields)
    result = await api(viewer, "POST", "/v0/jobs", body=body, csrf=fields.get("csrf", ""))
    if not result.ok:
        return await jobs(error=result.error, status=result.status, submitted=fields)
    return back(f"/ui/jobs/{result.body['id']}")


@blueprint.post("/jobs/<job_id>/cancel")
async def cancel_job(job_id: str) -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    fields = await form()
    result = await api(viewer, "POST", f"/v0/jobs/{job_id}:cancel", csrf=fields.get("csrf", ""))
    if not result.ok:
        return await job(job_id, error=result.error, status=result.status)
    return back(f"/ui/jobs/{job_id}")


@blueprint.get("/jobs/<job_id>/fields")
async def job_fields(job_id: str) -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return Response("", status=401)
    result = await api(viewer, "GET", f"/v0/jobs/{job_id}")
    if not result.ok:
        return Response("", status=result.status)
    return await page("_job_fields.html", viewer, job=result.body, terminal=JobState(result.body["state"]).is_terminal)


@blueprint.get("/jobs/<job_id>")
async def job(job_id: str, error: str | None = None, status: int = 200) -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    result = await api(viewer, "GET", f"/v0/jobs/{job_id}")
    if not result.ok:
        return await page("job.html", viewer, result.status, job=None, error=result.error)
    return await page("job.html", viewer, status, job=result.body, error=error,
                      terminal=JobState(result.body["state"]).is_terminal)


# --- usage ------------------------------------------------------------------------------------

def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@blueprint.get("/usage")
async def usage(error: str | None = None, status: int = 200) -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    month = request.args.get("month") or None
    daily = await api(viewer, "GET", "/v0/billing/usage/daily", params={"month": month} if month else None)
    summary = await api(viewer, "GET", "/v0/billing/usage")
    limits = await api(viewer, "GET", "/v0/billing/limits")
    # Only payg and team workspaces have invoices; asking on another plan is a (logged) 403.
    invoices = (await api(viewer, "GET", "/v0/billing/invoices", params={"limit": 12})
                if viewer.plan in INVOICING_PLANS else None)
    charts = []
    if daily.ok:
        days = {day["date"]: day for day in daily.body["days"]}
        year, number = (int(part) for part in daily.body["month"].split("-"))
        # Every day of the month gets a slot, so the bars keep their width as the month goes on.
        dates = [f"{year:04d}-{number:02d}-{day:02d}" for day in range(1, calendar.monthrange(year, number)[1] + 1)]
        for title, key, unit in (("CPU", "cpuSeconds", "CPU-seconds"), ("GPU", "gpuSeconds", "GPU-seconds"),
                                 ("Memory", "gbSeconds", "GB-seconds")):
            points = [(date[-2:], float(days[date][key]) if date in days else 0.0) for date in dates]
            charts.append(bar_chart(title, unit, points))
    gauge = None
    if summary.ok and limits.ok:
        gauge = cap_gauge(_decimal(summary.body["estimateUsd"]) or Decimal(0), _decimal(limits.body["softCapUsd"]),
                          _decimal(limits.body["hardCapUsd"]))
    failed = next((r for r in (daily, summary, limits) if not r.ok), None)
    return await page(
        "usage.html", viewer, status, charts=charts, month=daily.body.get("month") if daily.ok else month,
        summary=summary.body if summary.ok else None, limits=limits.body if limits.ok else None, gauge=gauge,
        invoices=invoices.body.get("items", []) if invoices is not None and invoices.ok else [],
        invoices_note=(f"the {viewer.plan} plan has no invoices; payg and team workspaces do" if invoices is None
                       else None if invoices.ok else invoices.error),
        error=error or (failed.error if failed else None),
    )


def _cap(text: str) -> Decimal | None:
    text = text.strip().lstrip("$")
    if not text:
        return None
    try:
        return Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"{text!r} is not an amount in USD") from exc


@blueprint.post("/usage/limits")
async def update_limits() -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    fields = await form()
    try:
        soft, hard = _cap(fields.get("soft", "")), _cap(fields.get("hard", ""))
    except ValueError as exc:
        return await usage(error=str(exc), status=422)
    body = {"softCapUsd": None if soft is None else float(soft), "hardCapUsd": None if hard is None else float(hard)}
    result = await api(viewer, "PATCH", "/v0/billing/limits", body=body, csrf=fields.get("csrf", ""))
    if not result.ok:
        return await usage(error=result.error, status=result.status)
    return back("/ui/usage")


# --- access -----------------------------------------------------------------------------------

def _audit_query() -> tuple[dict[str, Any], dict[str, str]]:
    shown = {name: request.args.get(name, "") for name in ("action", "actor", "since", "until", "cursor")}
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    if shown["action"]:
        params["action"] = [a.strip() for a in shown["action"].split(",") if a.strip()]
    if shown["actor"]:
        params["actor"] = shown["actor"]
    for name in ("since", "until"):
        converted = _local_time(shown[name])
        if converted:
            params[name] = converted
    if shown["cursor"]:
        params["cursor"] = shown["cursor"]
    return params, shown


@blueprint.get("/access")
async def access(error: str | None = None, status: int = 200, created: dict[str, Any] | None = None) -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    ws = viewer.workspace_id
    members = await api(viewer, "GET", f"/v0/workspaces/{ws}/members", params={"limit": 100})
    tokens = await api(viewer, "GET", "/v0/tokens", params={"limit": PAGE_SIZE})
    hooks = await api(viewer, "GET", "/v0/webhooks", params={"limit": 20})
    deliveries: dict[str, list[dict[str, Any]]] = {}
    if hooks.ok:
        for hook in hooks.body.get("items", [])[:10]:
            found = await api(viewer, "GET", f"/v0/webhooks/{hook['id']}/deliveries", params={"limit": 5})
            deliveries[hook["id"]] = found.body.get("items", []) if found.ok else []
    audit_params, audit_shown = _audit_query()
    audit = await api(viewer, "GET", f"/v0/workspaces/{ws}/audit", params=audit_params)
    filters = {k: v for k, v in audit_shown.items() if k != "cursor" and v}
    export_params = {k: v for k, v in audit_params.items() if k not in {"limit", "cursor"}}
    audit_next = audit.body.get("nextCursor") if audit.ok else None
    return await page(
        "access.html", viewer, status, error=error, created=created,
        members=members.body.get("items", []) if members.ok else [], members_note=None if members.ok else members.error,
        tokens=tokens.body.get("items", []) if tokens.ok else [], tokens_note=None if tokens.ok else tokens.error,
        hooks=hooks.body.get("items", []) if hooks.ok else [], hooks_note=None if hooks.ok else hooks.error,
        deliveries=deliveries,
        audit=audit.body.get("items", []) if audit.ok else [], audit_note=None if audit.ok else audit.error,
        audit_shown=audit_shown,
        audit_next=("/ui/access?" + urlencode({**filters, "cursor": audit_next})) if audit_next else None,
        export_url=f"/v0/workspaces/{ws}/audit?" + urlencode({**export_params, "format": "jsonl"}, doseq=True),
    )


@blueprint.post("/access/tokens")
async def create_token() -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    fields = await form()
    body: dict[str, Any] = {"name": fields.get("name", "")}
    if fields.get("days"):
        try:
            body["expiresInSeconds"] = int(fields["days"]) * 86400
        except ValueError:
            return await access(error="the lifetime must be a whole number of days", status=422)
    result = await api(viewer, "POST", "/v0/tokens", body=body, csrf=fields.get("csrf", ""))
    if not result.ok:
        return await access(error=result.error, status=result.status)
    # The secret is shown in this one response and never again (no redirect, no storage).
    return await access(created={"what": "token", "name": result.body["name"], "secret": result.body["token"]})


@blueprint.post("/access/tokens/<token_id>/revoke")
async def revoke_token(token_id: str) -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    fields = await form()
    result = await api(viewer, "DELETE", f"/v0/tokens/{token_id}", csrf=fields.get("csrf", ""))
    if not result.ok:
        return await access(error=result.error, status=result.status)
    return back("/ui/access")


@blueprint.post("/access/members")
async def invite_member() -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    fields = await form()
    result = await api(viewer, "POST", f"/v0/workspaces/{viewer.workspace_id}/members",
                       body={"email": fields.get("email", ""), "role": fields.get("role", "member")},
                       csrf=fields.get("csrf", ""))
    if not result.ok:
        return await access(error=result.error, status=result.status)
    code = (result.body.get("invitation") or {}).get("code") if isinstance(result.body, dict) else None
    return await access(created={"what": "invitation", "name": fields.get("email", ""), "secret": code})


@blueprint.post("/access/members/<user_id>/role")
async def change_role(user_id: str) -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    fields = await form()
    result = await api(viewer, "PATCH", f"/v0/workspaces/{viewer.workspace_id}/members/{user_id}",
                       body={"role": fields.get("role", "")}, csrf=fields.get("csrf", ""))
    if not result.ok:
        return await access(error=result.error, status=result.status)
    return back("/ui/access")


@blueprint.post("/access/webhooks")
async def create_webhook() -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    data = await request.form
    events = data.getlist("events") or ["job.terminal"]
    result = await api(viewer, "POST", "/v0/webhooks", body={"url": data.get("url", ""), "events": events},
                       csrf=data.get("csrf", ""))
    if not result.ok:
        return await access(error=result.error, status=result.status)
    return await access(created={"what": "webhook secret", "name": result.body["url"], "secret": result.body["secret"]})


@blueprint.post("/access/webhooks/<webhook_id>/delete")
async def delete_webhook(webhook_id: str) -> Response:
    try:
        viewer = await load_viewer()
    except SignedOut:
        return to_sign_in()
    fields = await form()
    result = await api(viewer, "DELETE", f"/v0/webhooks/{webhook_id}", csrf=fields.get("csrf", ""))
    if not result.ok:
        return await access(error=result.error, status=result.status)
    return back("/ui/access")
