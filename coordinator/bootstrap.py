"""First start: create the owner, the first workspace, an owner PAT and a registration token."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from common.clock import Clock, to_millis
from common.ids import new_id
from coordinator.store.base import Store, TokenRecord
from coordinator.tokens import TokenKind, generate_token, hash_token


@dataclass(frozen=True)
class InitResult:
    user_id: str
    email: str
    workspace_id: str
    owner_token: str
    registration_token: str

    def as_json(self) -> dict[str, str]:
        return {
            "userId": self.user_id, "email": self.email, "workspaceId": self.workspace_id,
            "ownerToken": self.owner_token, "registrationToken": self.registration_token,
        }

    def as_text(self) -> str:
        fields = asdict(self)
        return (
            "Initialised a new coordinator store. These secrets are shown once; keep them.\n"
            f"  workspace:           {fields['workspace_id']}\n"
            f"  owner:               {fields['email']} ({fields['user_id']})\n"
            f"  owner token (PAT):   {fields['owner_token']}\n"
            f"  registration token:  {fields['registration_token']}\n"
        )


async def initialize(store: Store, clock: Clock, *, plan: str, email: str = "owner@localhost") -> InitResult | None:
    """Initialise an empty store; return None (and change nothing) if it already has an owner.

    Safe when several replicas start at once on an empty database: one of them initialises it
    and the others get None (the store decides, in one transaction)."""
    if not await store.is_empty():
        return None
    now = clock.now()
    millis = to_millis(now)
    user_id = new_id("usr", now)
    workspace_id = new_id("ws", now)
    owner_token = generate_token(TokenKind.PAT)
    registration_token = generate_token(TokenKind.REGISTRATION)
    tokens = [
        TokenRecord(new_id("pat", now), TokenKind.PAT.value, hash_token(owner_token), workspace_id, user_id, None,
                    "owner token (init)", millis),
        TokenRecord(new_id("tok", now), TokenKind.REGISTRATION.value, hash_token(registration_token), workspace_id,
                    None, None, "agent registration (init)", millis),
    ]
    if not await store.bootstrap(user_id=user_id, email=email, workspace_id=workspace_id,
                                 workspace_name="default", plan=plan, tokens=tokens, now=millis):
        return None  # another replica initialised it first
    return InitResult(user_id, email, workspace_id, owner_token, registration_token)
