"""Wire models of the public API, declared once; validation and OpenAPI both come from them.

Requests are validated strictly (no "30" for 30, no unknown fields). ``validation_error``
turns pydantic's report into the API's error taxonomy: 400 for what cannot be parsed
(missing field, wrong JSON type, unknown field), 422 for well-typed values that break a rule.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from common.errors import BadRequest, ComputeError, Unprocessable
from common.states import AgentState, JobState

# Control characters (C0, DEL, C1) and bidirectional overrides have no place in a name a person
# reads: a NUL truncates it in C tools, an escape sequence rewrites a terminal, U+202E shows
# "exe.txt" for "txt.exe". Human-readable fields carry this pattern (and so does the OpenAPI
# document); ``validation_error`` names the field and the rule.
HUMAN_TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]*$"
HumanText = StringConstraints(pattern=HUMAN_TEXT_PATTERN)

LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$"
LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, StringConstraints(max_length=256), HumanText]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")]
# A NUL byte cannot reach a process (argv and the environment are C strings): refuse it up front.
EnvValue = Annotated[str, StringConstraints(max_length=32768, pattern=r"^[^\x00]*$")]

MAX_TIMEOUT_SECONDS = 604_800
# A job's selector as stored (its JSON) is a column of the claim index (jobs_claim_shapes):
# PostgreSQL refuses a B-tree entry past about 2.7 KB, so the whole selector is bounded on
# every database alike, well above any real selector.
MAX_SELECTOR_BYTES = 2048
# Job priorities (issue 16), as Nomad: 0-100, default 50.
MAX_PRIORITY = 100
DEFAULT_PRIORITY = 50

# Job arrays (issue 16): one request, one transaction, at most this many tasks.
MAX_ARRAY_COUNT = 10_000
# Every task stores its own copy of the manifest (command, env, labels, name, resources): the
# copies of one array may total at most this many bytes, so that a request under the body limit
# cannot become gigabytes of rows (10,000 copies of a 1 MiB manifest are 10 GiB).
MAX_ARRAY_MANIFEST_BYTES = 64 * 1024 * 1024
# What the coordinator sets in an array task's env: the agent passes these through (they are
# reserved, so a job's own env cannot hold them), unlike the rest of the reserved names.
ARRAY_ENV_NAMES = frozenset({"TANVRIT_ARRAY_ID", "TANVRIT_ARRAY_INDEX", "TANVRIT_ARRAY_COUNT"})

# What the agent sets for a job's isolation and identity: a job's own ``env`` may not override
# them (a job could otherwise widen its GPU set or pose as another job).
RESERVED_ENV_NAMES = frozenset({"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"})
RESERVED_ENV_PREFIX = "TANVRIT_"


def reserved_env_name(env: dict[str, str]) -> str | None:
    """The first name in ``env`` (sorted, so the answer is stable) that a job may not set."""
    for name in sorted(env):
        if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIX):
            return name
    return None


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Resources(RequestModel):
    """Limits enforced by the job's cgroup. An absent field means the agent's default."""

    cpus: Annotated[float | None, Field(gt=0, le=4096, description="CPU cores (quota)")] = None
    memoryMb: Annotated[int | None, Field(ge=1, le=16_777_216, description="Memory limit, MiB")] = None
    gpus: Annotated[int | None, Field(ge=0, le=64, description="Whole GPUs")] = None


# Retries and dependencies (issue 16).
MAX_RETRY_ATTEMPTS = 10
MAX_RETRY_BACKOFF_SECONDS = 86_400
MAX_DEPENDENCIES = 64
RetryOutcome = Literal["FAILED", "TIMED_OUT", "LOST"]
RETRY_OUTCOMES: tuple[RetryOutcome, ...] = ("FAILED", "TIMED_OUT", "LOST")
DependencyCondition = Literal["succeeded", "failed", "finished"]
JobId = Annotated[str, StringConstraints(pattern=r"^job_[0-9a-z]{26}$")]


def _unique(values: list[Any], what: str) -> list[Any]:
    if len(set(values)) != len(values):
        raise PydanticCustomError("duplicate", f"each {what} may appear once")
    return values


class RetrySpec(RequestModel):
    """``retry`` of ``POST /v0/jobs``: a failed attempt that matches is queued again after
    ``backoffSeconds`` with a new epoch, until ``attempts`` attempts have failed."""

    attempts: Annotated[int, Field(ge=1, le=MAX_RETRY_ATTEMPTS,
                                   description="The most attempts that may end in failure, the first one "
                                               "included (1: no retry)")]
    on: Annotated[list[RetryOutcome], Field(min_length=1, max_length=3,
                                            description="The outcomes that are retried; default all three")] = (
        Field(default_factory=lambda: list(RETRY_OUTCOMES)))
    exitCodes: Annotated[list[Annotated[int, Field(ge=1, le=255)]], Field(
        max_length=64, description="Retry a FAILED attempt only with one of these exit codes; empty: any")] = (
        Field(default_factory=list))
    backoffSeconds: Annotated[int, Field(ge=0, le=MAX_RETRY_BACKOFF_SECONDS,
                                         description="How long the job waits queued before its next attempt")] = 0

    @field_validator("on")
    @classmethod
    def _distinct_outcomes(cls, value: list[str]) -> list[str]:
        return _unique(value, "outcome")

    @field_validator("exitCodes")
    @classmethod
    def _distinct_codes(cls, value: list[int]) -> list[int]:
        return _unique(value, "exit code")

    @model_validator(mode="after")
    def _codes_need_failed(self) -> RetrySpec:
        if self.exitCodes and "FAILED" not in self.on:
            raise PydanticCustomError("exit_codes_without_failed",
                                      "exitCodes only apply to FAILED attempts: add FAILED to retry.on")
        return self


class DependencySpec(RequestModel):
    """One entry of ``dependsOn``: wait until job ``jobId`` (of the same workspace) has ended
    ``succeeded`` (Slurm afterok), ``failed`` (afternotok: any end but success) or ``finished``
    (afterany)."""

    jobId: JobId
    condition: DependencyCondition = "succeeded"


class ArraySpec(RequestModel):
    """``array`` of ``POST /v0/jobs``: ``count`` tasks of one manifest, as Slurm's ``--array=0-99%10``."""

    count: Annotated[int, Field(ge=1, le=MAX_ARRAY_COUNT,
                                description=f"Tasks, indexed 0 to count-1 (at most {MAX_ARRAY_COUNT})")]
    maxParallel: Annotated[int | None, Field(ge=1, le=MAX_ARRAY_COUNT,
                                             description="At most this many tasks ASSIGNED or RUNNING at once; "
                                                         "absent: no limit")] = None


class JobSubmit(RequestModel):
    """Body of ``POST /v0/jobs``, and the ``jobs run`` manifest."""

    type: Literal["COMMAND"]
    command: Annotated[str, Field(min_length=1, max_length=65_536, pattern=r"^[^\x00]*$",
                                 description="Run by /bin/sh -c")]
    timeoutSeconds: Annotated[int, Field(ge=1, le=MAX_TIMEOUT_SECONDS)] = 3600
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=64)] = Field(default_factory=dict)
    resources: Resources | None = None
    env: Annotated[dict[EnvName, EnvValue], Field(max_length=256)] = Field(default_factory=dict)
    name: Annotated[str | None, Field(max_length=200), HumanText] = None
    priority: Annotated[int, Field(ge=0, le=MAX_PRIORITY,
                                   description="0-100, higher claimed first, oldest first within a priority; a "
                                               "member may give at most the workspace's maxMemberPriority")] = (
        DEFAULT_PRIORITY)
    retry: RetrySpec | None = None
    dependsOn: Annotated[list[DependencySpec], Field(
        max_length=MAX_DEPENDENCIES, description="Jobs of this workspace that must end first; the job waits "
                                                 "QUEUED (waiting_for_dependencies) until each meets its "
                                                 "condition, and is CANCELLED (dependency_failed) when one "
                                                 "no longer can")] = Field(default_factory=list)

    @field_validator("labels")
    @classmethod
    def _selector_fits_the_claim_index(cls, value: dict[str, str]) -> dict[str, str]:
        if len(json.dumps(value)) > MAX_SELECTOR_BYTES:  # ASCII-only: characters are bytes
            raise ValueError(f"the labels take more than {MAX_SELECTOR_BYTES} bytes as JSON")
        return value

    @field_validator("dependsOn")
    @classmethod
    def _distinct_dependencies(cls, value: list[DependencySpec]) -> list[DependencySpec]:
        _unique([dependency.jobId for dependency in value], "dependency jobId")
        return value
    array: Annotated[ArraySpec | None, Field(description="Submit a job array: count tasks sharing this manifest, "
                                                         "each with TANVRIT_ARRAY_INDEX and TANVRIT_ARRAY_COUNT in "
                                                         "its env; answered with the array (JobArray)")] = None


class JobCreated(ResponseModel):
    id: str
    state: JobState
    createdAt: str


class Usage(ResponseModel):
    cpuSeconds: float = 0.0
    gpuSeconds: float = 0.0
    gbSeconds: float = 0.0
    # Reported beside GPU-seconds, not priced; null where no agent gave the figure.
    gpuMemoryGbSeconds: float | None = Field(default=None, description="GPU memory held x time, GB-seconds")
    gpuUtilSeconds: float | None = Field(default=None, description="GPU utilisation x time, GPU-seconds busy")


class ResourcesOut(ResponseModel):
    cpus: float | None = None
    memoryMb: int | None = None
    gpus: int | None = None


class Retry(ResponseModel):
    attempts: int
    on: list[JobState]
    exitCodes: list[int]
    backoffSeconds: int


class Dependency(ResponseModel):
    jobId: str
    condition: DependencyCondition


class Attempt(ResponseModel):
    """One attempt at a job (one claim by one agent, one lease epoch) and the usage it was
    billed. ``state`` is where the attempt left the job: ``ASSIGNED``/``RUNNING`` while it goes
    on, its result or ``LOST`` once over, ``QUEUED`` when it was handed back (``reason``)."""

    agentId: str
    epoch: int
    state: JobState
    assignedAt: str
    startedAt: str | None
    finishedAt: str | None
    exitCode: int | None
    reason: str | None
    usage: Usage


class Job(ResponseModel):
    id: str
    state: JobState
    type: Literal["COMMAND"]
    command: str
    name: str | None
    labels: dict[str, str]
    resources: ResourcesOut | None
    env: dict[str, str]
    timeoutSeconds: int
    createdAt: str
    startedAt: str | None
    finishedAt: str | None
    exitCode: int | None
    runtimeMs: int | None
    agentId: str | None
    usage: Usage | None
    reason: Annotated[str | None, Field(description="While QUEUED, why it waits: no_matching_agent (no live agent "
                                                    "has its labels and room for its resources), agent_draining, "
                                                    "waiting_for_capacity, held_by_cap, waiting_for_dependencies, "
                                                    "waiting_for_retry, array_max_parallel (its job array has "
                                                    "maxParallel tasks running); once over, why it ended "
                                                    "(dependency_failed: a dependency can no longer meet its "
                                                    "condition)")]
    signal: Annotated[str | None, Field(description="The signal that ended the job: TERM or KILL when the agent "
                                                    "stopped it (timeout, cancel), the job's own fatal signal "
                                                    "otherwise; null when it exited")]
    # Additive: every attempt, oldest first; ``usage`` is their sum.
    attempts: list[Attempt] = Field(default_factory=list)
    priority: int = Field(default=DEFAULT_PRIORITY, description="0-100, higher claimed first")
    retry: Retry | None = Field(default=None, description="The retry policy as submitted; null: none")
    dependsOn: list[Dependency] = Field(default_factory=list, description="The dependencies as submitted")
    notBefore: str | None = Field(default=None, description="While QUEUED after a failed attempt "
                                                            "(waiting_for_retry): when the next attempt may start")
    # Additive (issue 16): arrays and the fair-share queue.
    arrayId: str | None = Field(default=None, description="The job array this job is a task of")
    arrayIndex: int | None = Field(default=None, description="Its index in the array, 0 to count-1")
    submittedBy: str | None = Field(default=None, description="Who submitted it (a user id, or a token id): the "
                                                              "queue shares dispatch between submitters")
    position: int | None = Field(default=None, description="While QUEUED: its place in the workspace's dispatch "
                                                           "order, 1 = next (priority first, then round robin "
                                                           "between submitters, oldest first); an estimate that "
                                                           "ignores labels, resources and array limits")


class ArraySummary(ResponseModel):
    """How many of an array's tasks are in each state."""

    QUEUED: int = 0
    ASSIGNED: int = 0
    RUNNING: int = 0
    SUCCEEDED: int = 0
    FAILED: int = 0
    CANCELLED: int = 0
    TIMED_OUT: int = 0
    LOST: int = 0


class JobArray(ResponseModel):
    """A job array: ``count`` tasks (jobs ``arrayIndex`` 0..count-1) sharing one manifest."""

    id: str
    state: Annotated[JobState, Field(description="QUEUED until a task is claimed; RUNNING while any task is not "
                                                 "terminal; then SUCCEEDED when every task did, CANCELLED when any "
                                                 "was cancelled, else FAILED")]
    name: str | None
    count: int
    maxParallel: int | None
    createdAt: str
    submittedBy: str | None
    summary: ArraySummary


class GpuUnit(ResponseModel):
    """One allocatable GPU of an agent: a whole device, or one MIG instance."""

    uuid: str
    model: str
    memoryMb: int
    parentUuid: str | None = Field(default=None, description="The device a MIG instance is part of")


class Capacity(ResponseModel):
    cpus: float
    memoryMb: int
    gpus: int
    gpuModels: dict[str, int] | None = Field(default=None, description="How many of gpus are of each model")
    gpuUnits: list[GpuUnit] | None = Field(default=None, description="Each allocatable GPU, by UUID")


class Agent(ResponseModel):
    id: str
    name: str
    state: AgentState
    labels: dict[str, str]
    capacity: Capacity
    lastHeartbeatAt: str | None
    currentJobs: list[str]
    version: str
    registeredAt: str


class RegistrationTokenCreate(RequestModel):
    """Body of ``POST /v0/registration-tokens``."""

    name: Annotated[str, Field(min_length=1, max_length=200), HumanText] = "agent registration"
    expiresAt: Annotated[str | None, Field(description="RFC 3339, in the future; null: never expires",
                                           json_schema_extra={"format": "date-time"})] = None


class RegistrationToken(ResponseModel):
    id: str
    name: str
    createdAt: str
    expiresAt: str | None
    revokedAt: str | None


class RegistrationTokenCreated(RegistrationToken):
    token: str = Field(description="The secret; shown only in this response")


T = TypeVar("T")


class Page(ResponseModel, Generic[T]):
    items: list[T]
    nextCursor: str | None


class ErrorBody(ResponseModel):
    code: str
    message: str
    field: str | None
    requestId: str


class ErrorEnvelope(ResponseModel):
    error: ErrorBody


_PARSE_ERRORS = {"missing": "missing_field", "extra_forbidden": "unknown_field"}


def _union_tag(part: object) -> bool:
    """Whether ``part`` of an error's location names a union member, not a field."""
    return isinstance(part, str) and (part == "constrained-str" or part.startswith(("literal[", "function-")))


def validation_error(exc: ValidationError) -> ComputeError:
    """Translate pydantic's first complaint into a ``BadRequest`` or ``Unprocessable``."""
    first = exc.errors(include_url=False)[0]
    # A union member's tag (``name: WorkspaceName | SkipJsonSchema[None]``) is not a field.
    field = ".".join(str(part) for part in first["loc"] if not _union_tag(part)) or None
    kind = first["type"]
    message = first["msg"]
    if field:
        message = f"{field}: {message}"
    if kind == "string_pattern_mismatch" and first.get("ctx", {}).get("pattern") == HUMAN_TEXT_PATTERN:
        return Unprocessable(f"{field}: must not contain control characters", code="invalid_value", field=field)
    if kind in _PARSE_ERRORS:
        return BadRequest(message, code=_PARSE_ERRORS[kind], field=field)
    if kind.endswith("_type") or kind in {"model_attributes_type", "dict_type", "list_type"}:
        return BadRequest(message, code="invalid_type", field=field)
    if kind == "literal_error" and not isinstance(first.get("input"), str):
        # 2 for "member" is the wrong JSON type, not an unknown enum value.
        return BadRequest(message, code="invalid_type", field=field)
    return Unprocessable(message, code="invalid_value", field=field)


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], payload: Any) -> M:
    """Validate a decoded JSON value against ``model``; raises a ``ComputeError``."""
    if not isinstance(payload, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_type")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc) from exc


# --- identity and workspaces -------------------------------------------------------------

RoleName = Literal["owner", "admin", "member"]
PlanName = Literal["hobby", "payg", "team", "enterprise"]
WorkspaceName = Annotated[str, StringConstraints(min_length=1, max_length=100), HumanText]
RegionName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9\-]{0,63}$")]
Email = Annotated[str, StringConstraints(pattern=r"^[^@\s\x00-\x1f\x7f-\x9f]{1,64}@[^@\s\x00-\x1f\x7f-\x9f]{1,189}$",
                                         max_length=254)]
SecretText = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class WorkspaceCreate(RequestModel):
    """Body of ``POST /v0/workspaces``; the caller becomes its owner."""

    name: WorkspaceName
    defaultRegion: RegionName | None = None


def _no_default(schema: dict[str, Any]) -> None:
    """Drop ``"default": null`` from a field whose schema does not allow null."""
    schema.pop("default", None)


class WorkspacePatch(RequestModel):
    """Body of ``PATCH /v0/workspaces/{id}``: absent fields are left alone; ``plan`` needs an owner."""

    # name and plan cannot be cleared: null is refused, and the schema says so (no null branch).
    name: Annotated[WorkspaceName | None, WithJsonSchema(TypeAdapter(WorkspaceName).json_schema()),
                    Field(json_schema_extra=_no_default)] = None
    defaultRegion: RegionName | None = Field(default=None, description="null clears it")
    plan: Annotated[PlanName | None, WithJsonSchema(TypeAdapter(PlanName).json_schema()),
                    Field(json_schema_extra=_no_default)] = None
    maxMemberPriority: Annotated[int | None, WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY}),
                                 Field(ge=0, le=MAX_PRIORITY, json_schema_extra=_no_default,
                                       description="The highest job priority a member may submit")] = None


class Workspace(ResponseModel):
    id: str
    name: str
    plan: PlanName
    defaultRegion: str | None
    createdAt: str
    role: RoleName = Field(description="The caller's role in this workspace")
    maxMemberPriority: int = Field(default=DEFAULT_PRIORITY,
                                   description="The highest job priority a member may submit; admins and owners "
                                               "are not limited")


class MemberInvite(RequestModel):
    """Body of ``POST /v0/workspaces/{id}/members``."""

    email: Email
    role: RoleName


class MemberPatch(RequestModel):
    role: RoleName


class Member(ResponseModel):
    userId: str
    email: str
    role: RoleName
    createdAt: str
    status: Literal["invited", "active"] = Field(description="invited until the invitation is redeemed")


class Invitation(ResponseModel):
    id: str
    code: str = Field(description="One-time code for POST /v0/invitations:redeem; shown once")
    expiresAt: str


class MemberInvited(ResponseModel):
    member: Member
    invitation: Invitation = Field(
        description="A one-time code for the member: for an email that already has an account it "
                    "yields a login that reaches this membership only (the account's own logins reach "
                    "it at once too)")


class InvitationRedeem(RequestModel):
    code: SecretText


class OAuthTokenRequest(RequestModel):
    """``POST /v0/oauth/token``, as a form (RFC 6749) or JSON. Field names follow RFC 6749."""

    # The refresh grant needs its token (else RFC 6749's 400 invalid_request); the client
    # credentials grant may carry its credentials in a Basic header instead of the body.
    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"grant_type": {"const": "refresh_token"}}, "required": ["grant_type"]},
        "then": {"required": ["refresh_token"], "properties": {"refresh_token": {"type": "string"}}},
    })

    # Other values are refused with RFC 6749's 400 unsupported_grant_type, not a validation error.
    grant_type: Annotated[str, StringConstraints(max_length=100),
                          Field(json_schema_extra={"enum": ["refresh_token", "client_credentials"]})]
    refresh_token: SecretText | None = None
    client_id: Annotated[str, StringConstraints(max_length=100)] | None = None
    client_secret: SecretText | None = None
    scope: Annotated[str, StringConstraints(max_length=200)] | None = Field(default=None,
                                                                           description="Accepted and ignored")


class OAuthToken(ResponseModel):
    """RFC 6749 token response. ``refresh_token`` is present for the refresh-token grant (rotated:
    use the new one next time) and after redeeming an invitation."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    refresh_token: str | None = None


class InvitationRedeemed(ResponseModel):
    userId: str
    workspaceId: str
    role: RoleName
    token: OAuthToken


class TokenCreate(RequestModel):
    """Body of ``POST /v0/tokens``: a personal access token for headless work."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=100), HumanText]
    expiresInSeconds: Annotated[int | None, Field(ge=60, le=10 * 366 * 86400)] = None
    userId: Annotated[str | None, Field(max_length=64, description="Whose token; default the caller")] = None


class TokenInfo(ResponseModel):
    id: str
    name: str
    userId: str | None
    workspaceId: str
    prefix: str = Field(description="Readable start of the secret, e.g. tcp_pat_")
    createdAt: str
    createdBy: str | None
    expiresAt: str | None
    revokedAt: str | None


class TokenCreated(TokenInfo):
    token: str = Field(description="The secret; shown once")


class AuditEvent(ResponseModel):
    id: str
    time: str
    actor: str | None
    action: str
    target: str | None
    result: Literal["success", "denied", "failed"]
    status: int
    errorCode: str | None
    requestId: str
    sourceAddress: str | None
    method: str
    path: str


# --- billing ------------------------------------------------------------------------------

def _usd_number(amount: Decimal) -> float:
    # A rounded dollar figure is written as a JSON number, as in the reference (0.26).
    return float(amount)


UsdNumber = Annotated[Decimal, PlainSerializer(_usd_number, return_type=float, when_used="json")]


class UsageSummary(ResponseModel):
    windowStart: str
    windowEnd: str
    cpuSeconds: float
    gpuSeconds: float
    gbSeconds: float
    gpuMemoryGbSeconds: float = Field(description="GPU memory held x time (reported, not priced)")
    gpuUtilSeconds: float = Field(description="GPU utilisation x time (reported, not priced)")
    estimateUsd: UsdNumber


class BillingLimits(ResponseModel):
    softCapUsd: UsdNumber | None
    hardCapUsd: UsdNumber | None
    effectiveAt: str | None = Field(description="When these caps took effect, or will at the next meter tick")
    pending: bool = Field(description="True until the next meter tick applies these caps")
    hardCapReached: bool


def _decimal_number(value: Any) -> Any:
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    raise PydanticCustomError("decimal_type", "must be a number or null")


CapAmount = Annotated[Decimal, Field(ge=0, le=Decimal("1000000000000"), allow_inf_nan=False)]
Cap = Annotated[CapAmount | None, BeforeValidator(_decimal_number), Field(description="USD per month; null: none"),
                # A JSON number (never a string) or null, as _decimal_number takes it.
                WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0, "maximum": 1_000_000_000_000},
                                          {"type": "null"}]})]


class BillingLimitsPatch(RequestModel):
    """Body of ``PATCH /v0/billing/limits``; an absent field keeps its value, null removes the cap."""

    model_config = ConfigDict(extra="forbid", strict=False)

    softCapUsd: Cap = None
    hardCapUsd: Cap = None


class InvoiceLine(ResponseModel):
    resource: Literal["cpu", "memory", "gpu"]
    gpuModel: str | None
    unit: str
    quantity: str = Field(description="Exact decimal")
    unitPriceUsd: str = Field(description="Exact decimal")
    amountUsd: str = Field(description="Exact decimal, unrounded; lines add up to subtotalUsd")


class Invoice(ResponseModel):
    id: str
    periodStart: str
    periodEnd: str
    issuedAt: str
    currency: Literal["USD"]
    lines: list[InvoiceLine]
    subtotalUsd: str = Field(description="Exact sum of the lines")
    totalUsd: str = Field(description="subtotalUsd rounded half-up to cents")


# --- webhooks -----------------------------------------------------------------------------

WebhookEventType = Literal["job.created", "job.transitioned", "job.terminal", "billing.soft_cap_reached"]


class WebhookCreate(RequestModel):
    url: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@\x00-\x1f\x7f]+[^\s\x00-\x1f\x7f]*$",
                              description="http(s) URL; private, loopback and metadata addresses are refused")]
    events: Annotated[list[WebhookEventType], Field(min_length=1, max_length=16)]


class Webhook(ResponseModel):
    id: str
    url: str
    events: list[str]
    createdAt: str


class WebhookCreated(Webhook):
    secret: str = Field(description="Shown once")


class WebhookSecretRotated(ResponseModel):
    id: str
    secret: str = Field(description="Shown once")
    previousSecretExpiresAt: str


class WebhookAttempt(ResponseModel):
    id: str
    eventId: str
    eventType: str
    attemptedAt: str
    statusCode: int | None
    latencyMs: int
    error: str | None
    deliveryState: Literal["pending", "delivered", "failed", "cancelled"]


class SessionCreate(RequestModel):
    """Body of ``POST /v0/sessions`` (the web console's sign-in): exactly one credential."""

    pat: SecretText | None = None
    invitationCode: SecretText | None = None


class SessionCreated(ResponseModel):
    userId: str
    workspaceId: str
    expiresAt: str
    csrfToken: str = Field(description="Send it as X-CSRF-Token with every change made with the session cookie")


class DailyUsage(ResponseModel):
    date: str = Field(description="The UTC day, YYYY-MM-DD")
    cpuSeconds: float
    gpuSeconds: float
    gbSeconds: float


class MonthUsage(ResponseModel):
    month: str = Field(description="YYYY-MM (UTC)")
    days: list[DailyUsage] = Field(description="Each day of the month up to today, oldest first")
