"""Who is calling: resolve the bearer token to a principal, its active workspace and role.

Every public handler starts with ``require_user`` (or ``require_account`` for calls that are
not about one workspace). Order of checks, and so of errors: the token (401), the active
workspace (404 when the caller is not a member, or the token is bound to another workspace:
never reveal whether it exists), the workspace's rate limit (429, counted even for requests
that then fail the role check), and the role (403). What was learnt is left on the request's
state (``coordinator/request_state.py``) for the audit and rate-limit hooks.

Which workspaces a token reaches is decided here and nowhere else (``bound_workspace``; the
model is written out in ``docs/security.md``): a user's own credentials (the PAT they issued
for themselves, the owner PAT made at initialisation, their OAuth session and the access
tokens minted from these) reach every workspace the user belongs to, with the role held there,
as a ``gh`` token does. A credential someone else minted for the user (an admin's
``POST /v0/tokens {"userId": ...}``, and the access tokens minted from it) is bound to the
workspace it was minted in: an admin of one workspace must not be able to act as the user in
another. A login that began with an invitation code (a code is minted by the inviting admin,
who may have redeemed it) reaches only the memberships that carry its invitation: the one
the invitation made and the workspaces created with that login (``reaches``). Agent and
registration tokens are always bound to their workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from common.clock import to_millis
from common.errors import Forbidden, NotFound, RateLimited, Unauthorized
from coordinator.context import Services, services
from coordinator.request_state import current
from coordinator.store.base import Membership, Store, TokenRecord
from coordinator.tokens import TokenKind, csrf_token_for, hash_token, hashes_equal

# The web console's session (coordinator/console): an HttpOnly cookie holding a SESSION token.
SESSION_COOKIE = "tanvrit_session"
# The console's chosen workspace. The browser's own calls to /v0 (the log stream, which an
# EventSource cannot give headers) carry it in place of ``X-Compute-Workspace``; it names a
# workspace and grants nothing: membership is checked as for the header.
WORKSPACE_COOKIE = "tanvrit_workspace"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Role(IntEnum):
    MEMBER = 1
    ADMIN = 2
    OWNER = 3

    @classmethod
    def named(cls, name: str) -> Role:
        return cls[name.upper()]

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    token_id: str
    user_id: str | None
    agent_id: str | None
    workspace_id: str
    role: Role | None

    @property
    def actor(self) -> str:
        return self.user_id or self.agent_id or self.token_id


@dataclass(frozen=True)
class Account:
    """An authenticated user, before (or without) choosing a workspace."""

    token: TokenRecord
    user_id: str
    bound_workspace: str | None = None  # the token reaches this workspace only; None: all of the user's


def bound_workspace(record: TokenRecord) -> str | None:
    """The only workspace ``record`` may act in, or None when it may act in every workspace its
    user belongs to (see the module docstring)."""
    if record.user_id is None:  # agent and registration tokens
        return record.workspace_id
    if record.created_by is not None and record.created_by != record.user_id:
        return record.workspace_id
    return None


def reaches(record: TokenRecord, membership: Membership) -> bool:
    """Whether ``record`` (a user's token) may act through ``membership`` (its user's, in the
    workspace asked for). A login that began with an invitation code reaches only memberships
    of that invitation; every other token only what ``bound_workspace`` allows."""
    bound = bound_workspace(record)
    if bound is not None and bound != membership.workspace_id:
        return False
    return record.invitation_id is None or record.invitation_id == membership.invitation_id


async def still_admitted(store: Store, record: TokenRecord, workspace_id: str, now_ms: int) -> bool:
    """Whether ``record`` (a user's token, checked when a long response began) still admits its
    user to ``workspace_id``: not revoked (a session also dies with its PAT and at sign-out), not
    expired, and the user still a member. A response that outlives its request (a followed log)
    asks this as it goes, so that revoking a token or removing a member also ends it."""
    current = await store.get_token(record.workspace_id, record.id)
    if current is None or current.revoked_at is not None:
        return False
    if current.expires_at is not None and current.expires_at <= now_ms:
        return False
    if record.user_id is None:
        return False
    membership = await store.membership(workspace_id, record.user_id)
    return membership is not None and reaches(current, membership)


def creator_for(caller: TokenRecord, user_id: str) -> str | None:
    """The ``created_by`` of a token the caller's token mints now for ``user_id``.

    A token never mints one that reaches further than itself: a token bound to its workspace
    (an admin-minted PAT, or a session or access token made from one) that mints a PAT for its
    own user passes its binding on (the original minter stays ``created_by``). Otherwise the
    calling user is the creator, which binds a token minted for someone else as usual."""
    if user_id == caller.user_id and bound_workspace(caller) is not None:
        return caller.created_by
    return caller.user_id


def caller_token() -> TokenRecord:
    """The live token ``require_user`` (or ``require_account``) accepted for this request."""
    record = current().token_record
    assert record is not None
    return record


def invitation_for(caller: TokenRecord, user_id: str) -> str | None:
    """The ``invitation_id`` of a token the caller's token mints now for ``user_id``: a login
    that began with an invitation passes it on to the tokens it mints for its own user, so they
    reach no further (``reaches``). A token minted for someone else is bound by ``creator_for``."""
    return caller.invitation_id if user_id == caller.user_id else None


def bearer_secret() -> str | None:
    header = current().headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return secret.strip()


async def check_token(secret: str, accepted: set[TokenKind]) -> TokenRecord | None:
    """The live token record for ``secret`` if it is one of ``accepted``; None otherwise.

    A recognised but dead token (expired, revoked, wrong kind) is left on the request's
    ``token_record`` so that the denial can be audited in its workspace.
    """
    digest = hash_token(secret)
    svc = services()
    record = await _find_token(svc, digest)
    if record is None or not hashes_equal(record.token_hash, digest):
        return None
    current().token_record = record
    now = to_millis(svc.clock.now())
    if (
        TokenKind(record.kind) not in accepted
        or record.revoked_at is not None
        or (record.expires_at is not None and record.expires_at <= now)
    ):
        return None
    return record


async def _find_token(svc: Services, digest: str) -> TokenRecord | None:
    """``find_token`` through the identity cache (coordinator/identity_cache.py)."""
    cache = svc.identity_cache
    assert cache is not None
    key = ("token", digest)
    cached = cache.get(key)
    if isinstance(cached, TokenRecord):
        return cached
    generation = cache.generation
    record = await svc.store.find_token(digest)
    if record is not None:
        cache.put(key, record, generation)
    return record


async def _membership(workspace_id: str, user_id: str) -> Membership | None:
    """``membership`` through the identity cache. ``still_admitted`` reads the store itself."""
    svc = services()
    cache = svc.identity_cache
    assert cache is not None
    key = ("membership", workspace_id, user_id)
    cached = cache.get(key)
    if isinstance(cached, Membership):
        return cached
    generation = cache.generation
    found = await svc.store.membership(workspace_id, user_id)
    if found is not None:
        cache.put(key, found, generation)
    return found


async def _token_from_header(accepted: set[TokenKind]) -> TokenRecord:
    secret = bearer_secret()
    if secret is None:
        raise Unauthorized("send a bearer token in the Authorization header", code="missing_token")
    record = await check_token(secret, accepted)
    if record is None:
        raise Unauthorized("the token is invalid, expired or revoked", code="invalid_token")
    return record


_USER_TOKENS = {TokenKind.PAT, TokenKind.ACCESS}


async def _user_token() -> TokenRecord:
    """The caller's token: the bearer header when there is one, else the console's session cookie.

    A session is accepted from the cookie only (a bearer ``tcp_ses_`` is refused), so it can be
    neither read by page scripts nor replayed outside the browser that holds it. A mutation
    carried by the cookie must also carry the session's CSRF token in ``X-CSRF-Token``: the
    cookie is ``SameSite=Strict`` already, and this holds even where that is not honoured.
    """
    state = current()
    cookie = state.cookies.get(SESSION_COOKIE)
    if bearer_secret() is not None or not cookie:
        return await _token_from_header(_USER_TOKENS)
    record = await check_token(cookie, {TokenKind.SESSION})
    if record is None:
        raise Unauthorized("the console session has expired or was ended; sign in again", code="invalid_session")
    if state.method not in _SAFE_METHODS and not hashes_equal(
        state.headers.get(CSRF_HEADER, ""), csrf_token_for(cookie)
    ):
        raise Forbidden("this change needs the console's CSRF token in X-CSRF-Token", code="csrf_token_invalid")
    return record


def _charge(membership: Membership) -> None:
    """Count one request against the workspace's rate limit; raise 429 past it."""
    svc = services()
    limiter = svc.ratelimiter
    if limiter is None:
        return
    decision = limiter.check(membership.workspace_id, membership.plan, svc.clock.now())
    current().rate_decision = decision
    if decision is not None and not decision.allowed:
        raise RateLimited(f"this workspace is over its {membership.plan} plan's request rate; retry after "
                          f"{decision.retry_after_seconds} s", retry_after_seconds=decision.retry_after_seconds)


async def require_account(*, creates_workspace: bool = False) -> Account:
    """The calling user, for calls that span workspaces. They are counted against the token's
    default workspace when the user still belongs to it. A token bound to one workspace may
    not create another (403 ``token_bound_to_workspace``): it would act beyond its workspace."""
    record = await _user_token()
    assert record.user_id is not None
    state = current()
    state.actor = record.user_id
    bound = bound_workspace(record)
    membership = await _membership(record.workspace_id, record.user_id)
    if membership is not None and reaches(record, membership):
        state.audit_workspace = record.workspace_id
        _charge(membership)
    if creates_workspace and bound is not None:
        raise Forbidden("this token was issued for one workspace by someone else and cannot create workspaces",
                        code="token_bound_to_workspace")
    return Account(record, record.user_id, bound)


async def require_user(minimum: Role = Role.MEMBER, *, workspace_id: str | None = None) -> Principal:
    """The calling user in the active workspace, with at least ``minimum`` role.

    The active workspace is ``workspace_id`` when given (a path parameter), else the
    ``X-Compute-Workspace`` header, else the token's default workspace. Raises 401 for a bad
    token, 404 for a workspace the caller cannot see, 429 over the rate limit, 403 for too low
    a role.
    """
    record = await _user_token()
    assert record.user_id is not None
    state = current()
    state.actor = record.user_id
    # Denials before the workspace is known are logged where the token belongs.
    state.audit_workspace = record.workspace_id
    chosen_in_console = state.cookies.get(WORKSPACE_COOKIE) if TokenKind(record.kind) == TokenKind.SESSION else None
    active = workspace_id or state.headers.get("X-Compute-Workspace") or chosen_in_console or record.workspace_id
    bound = bound_workspace(record)
    membership = None if bound not in (None, active) else await _membership(active, record.user_id)
    if membership is None or not reaches(record, membership):
        raise NotFound("no such workspace", code="workspace_not_found")
    state.audit_workspace = active
    role = Role.named(membership.role)
    principal = Principal(record.id, record.user_id, None, active, role)
    state.principal = principal
    _charge(membership)
    if role < minimum:
        raise Forbidden(f"this needs the {minimum.label} role", code="insufficient_role")
    return principal


def require_role(principal: Principal, minimum: Role, what: str) -> None:
    """Raise 403 unless ``principal`` has at least ``minimum``; ``what`` finishes the message."""
    if principal.role is None or principal.role < minimum:
        raise Forbidden(f"{what} needs the {minimum.label} role", code="insufficient_role")


async def require_agent() -> Principal:
    record = await _token_from_header({TokenKind.AGENT})
    principal = Principal(record.id, None, record.agent_id, record.workspace_id, None)
    current().principal = principal
    return principal


async def require_registration_token() -> TokenRecord:
    return await _token_from_header({TokenKind.REGISTRATION})
