"""The audit log: which requests are written, and how each is named.

Written once, from the app's after-request hook (``coordinator/observability.py``), so that
every endpoint, including ones added later, is audited without its handler doing anything:

- every mutating request (POST, PUT, PATCH, DELETE) to the public API ``/v0``, whatever its result;
- every denied request to ``/v0`` (401, 403, 429), reads included.

Agent-protocol calls (``/agent/v0``) are not audited: they are machine traffic at heartbeat
rate, authenticated by agent tokens, and their effects (job transitions) are already recorded
on the jobs themselves. The exception is a job event the coordinator refuses (action
``agent.event_refused``, written by the store with the event's code; see ``docs/security.md``).
A row's workspace is the request's active workspace once it is known;
a denial before that (a foreign workspace, a dead token) is written to the workspace the token
belongs to, and a request with no recognisable token to no workspace (``workspace_id`` null:
kept for operators, invisible through the API).

Handlers may name the target (``note_target``) or the workspace and actor for calls that carry
no bearer token (``note_actor``); otherwise the target is the last path parameter, or the ``id``
of the object a successful request returned.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common.clock import to_millis
from common.ids import new_id
from coordinator.request_state import current
from coordinator.store.base import AuditRecord

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DENIED = frozenset({401, 403, 429})
PUBLIC_PREFIX = "/v0/"

# Friendlier names for known endpoints (Quart endpoint name → action). Endpoints not listed are
# audited under their endpoint name ("blueprint.handler"), so nothing is ever missed.
ACTIONS: dict[str, str] = {
    "jobs.submit_job": "job.submit",
    "jobs.cancel_job": "job.cancel",
    "arrays.cancel_array": "array.cancel",
    "agents.drain_agent": "agent.drain",
    "agents.resume_agent": "agent.resume",
    "agents.delete_agent": "agent.delete",
    "agents.create_registration_token": "registration_token.create",
    "agents.revoke_registration_token": "registration_token.revoke",
    "workspaces.create_workspace": "workspace.create",
    "workspaces.update_workspace": "workspace.update",
    "workspaces.invite_member": "member.invite",
    "workspaces.update_member": "member.update",
    "workspaces.remove_member": "member.remove",
    "tokens.create_token": "token.create",
    "tokens.revoke_token": "token.revoke",
    "oauth.issue_token": "oauth.token",
    "oauth.redeem_invitation": "invitation.redeem",
    "billing.patch_limits": "billing.limits.update",
    "webhooks.create_webhook": "webhook.create",
    "webhooks.delete_webhook": "webhook.delete",
    "webhooks.rotate_secret": "webhook.rotate_secret",
    "sessions.create_session": "session.create",
    "sessions.delete_session": "session.delete",
}


def is_audited(method: str, path: str, status: int) -> bool:
    """Whether a request gets an audit row (pure; see the module docstring)."""
    if not path.startswith(PUBLIC_PREFIX):
        return False
    return method.upper() in MUTATING or status in DENIED


def result_of(status: int) -> str:
    if status < 400:
        return "success"
    if status in DENIED or status == 404:
        return "denied"
    return "failed"


def action_name(endpoint: str | None, method: str) -> str:
    if endpoint is None:
        return f"unknown_route.{method.lower()}"
    return ACTIONS.get(endpoint, endpoint)


def pick_target(noted: str | None, view_args: dict[str, Any] | None, body: Any) -> str | None:
    """The explicit target, else the last path parameter, else the ``id`` in the response body."""
    if noted is not None:
        return noted
    if view_args:
        return str(list(view_args.values())[-1])
    if isinstance(body, dict):
        found = body.get("id")
        if isinstance(found, str):
            return found
    return None


def note_target(target: str) -> None:
    """Name the object a request acted on, when the default would be wrong."""
    current().audit_target = target


def note_actor(workspace_id: str | None, actor: str | None) -> None:
    """For calls authenticated by something other than a bearer token (grants, invitations)."""
    state = current()
    if workspace_id is not None:
        state.audit_workspace = workspace_id
    if actor is not None:
        state.actor = actor


def request_record(now: datetime, status: int, *, target: str | None = None) -> AuditRecord:
    """The audit row of the current request answered with ``status``, from what the request
    noted in its state (who, which workspace, the error code, the id answered): nothing is
    parsed again. ``target`` overrides the default choice (``pick_target``)."""
    state = current()
    workspace_id = state.audit_workspace
    actor = state.actor
    token = state.token_record
    if workspace_id is None and token is not None:
        workspace_id = token.workspace_id
    if actor is None and token is not None:
        actor = token.user_id or token.agent_id or token.id
    answered = {"id": state.response_id} if status < 300 else None
    return AuditRecord(
        id=new_id("aud", now), workspace_id=workspace_id, at=to_millis(now), actor=actor,
        action=action_name(state.endpoint, state.method),
        target=target if target is not None else pick_target(state.audit_target, dict(state.view_args), answered),
        result=result_of(status), status=status, error_code=state.error_code if status >= 400 else None,
        request_id=state.request_id, source=state.remote_addr, method=state.method,
        path=state.path[:2000],
    )


def mark_written() -> None:
    """The handler wrote this request's audit row in its own transaction; the hook must not."""
    current().audit_written = True
