"""The agent protocol: its own URL namespace and shapes, used by both coordinator and agent.

Flow::

    agent                                   coordinator
      │ POST /agent/v0/register  (registration token) ─▶ agent id + agent token
      │ POST /agent/v0/heartbeat (agent token)       ─▶ drain flag, jobs to cancel
      │        (optionally held up to waitSeconds until there is an order: prompt cancels)
      │ POST /agent/v0/claim     (long-poll)         ─▶ 200 assignment | 204 nothing yet
      │ POST /agent/v0/events    (ordered batch)     ─▶ highest sequence number applied
      │ POST /agent/v0/release   (unused assignment) ─▶ 204, the job is queued again at once
      │ POST /agent/v0/goodbye   (clean exit)        ─▶ 204, the agent shows DOWN at once

Every event carries the agent's own sequence number (strictly increasing, durable in the
agent's spool), so a batch re-sent after a lost response is applied once. Job events carry
the lease epoch of the claim; an event from a stale epoch is refused, never applied.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.models import HumanText
from common.states import AgentState, JobState

PREFIX = "/agent/v0"
REGISTER_PATH = f"{PREFIX}/register"
HEARTBEAT_PATH = f"{PREFIX}/heartbeat"
CLAIM_PATH = f"{PREFIX}/claim"
EVENTS_PATH = f"{PREFIX}/events"
RELEASE_PATH = f"{PREFIX}/release"
GOODBYE_PATH = f"{PREFIX}/goodbye"

MAX_CLAIM_WAIT_SECONDS = 30.0
MAX_HEARTBEAT_WAIT_SECONDS = 60.0
MAX_EVENTS_PER_BATCH = 500


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GpuUnitMsg(_Msg):
    """One allocatable GPU: a whole device (``GPU-...``) or a MIG instance (``MIG-...``)."""

    uuid: str = Field(max_length=128)
    model: str = Field(max_length=200)
    memoryMb: int = Field(ge=0)
    parentUuid: str | None = Field(default=None, max_length=128)  # set for a MIG instance


class CapacityMsg(_Msg):
    # Physical bounds (the same as a job's resources): a host reporting more is refused (422),
    # since usage is checked against this capacity (``common.event_checks``).
    cpus: float = Field(ge=0, le=4096, allow_inf_nan=False)
    memoryMb: int = Field(ge=0, le=16_777_216)
    gpus: int = Field(ge=0, le=64)
    # Additive: how many of ``gpus`` are of each model, and each unit by UUID (registration
    # and first heartbeat only; a claim's free capacity leaves them out).
    gpuModels: dict[str, int] | None = Field(default=None, max_length=256)
    gpuUnits: list[GpuUnitMsg] | None = Field(default=None, max_length=512)


class RegisterRequest(_Msg):
    name: Annotated[str, Field(min_length=1, max_length=200), HumanText]
    labels: dict[str, str]
    capacity: CapacityMsg
    version: Annotated[str, Field(max_length=64), HumanText]


class RegisterResponse(_Msg):
    agentId: str
    agentToken: str
    workspaceId: str
    heartbeatIntervalSeconds: float


class RunningJob(_Msg):
    jobId: str
    epoch: int


class HeartbeatRequest(_Msg):
    state: AgentState
    runningJobs: list[RunningJob] = Field(default_factory=list)
    # Sent on the first heartbeat after a (re)start, so labels and capacity stay current.
    labels: dict[str, str] | None = None
    capacity: CapacityMsg | None = None
    version: str | None = None
    # Held heartbeat (additive; 0, the default, answers at once as before): the coordinator
    # records the beat at once, then holds the answer until it has an order the agent has not
    # heard yet (cancel a job, drain or resume) or until ``waitSeconds`` pass. An agent that
    # sends its heartbeat interval here and heartbeats again as soon as it is answered learns
    # of a cancel within milliseconds, and still beats once per interval.
    waitSeconds: float = Field(default=0.0, ge=0, le=MAX_HEARTBEAT_WAIT_SECONDS)
    # Additive: the worst delay of the agent's event loop since its previous heartbeat, in ms
    # (how late it woke up against what it asked for). Exported by the coordinator as
    # ``tanvrit_agent_loop_lag_seconds``.
    loopLagMs: float | None = Field(default=None, ge=0)


class HeartbeatResponse(_Msg):
    drain: bool
    cancelJobs: list[str]
    heartbeatIntervalSeconds: float


class ClaimRequest(_Msg):
    free: CapacityMsg
    # What the agent gives a job that does not say; the coordinator fits jobs with these.
    defaults: CapacityMsg | None = None
    waitSeconds: float = Field(default=25.0, ge=0, le=MAX_CLAIM_WAIT_SECONDS)


class Assignment(_Msg):
    jobId: str
    epoch: int
    command: str
    env: dict[str, str]
    timeoutSeconds: int
    cpus: float | None
    memoryMb: int | None
    gpus: int
    name: str | None


class ReleaseRequest(_Msg):
    """An assignment the agent cannot use (it is stopping, draining, or the job no longer
    fits): the coordinator queues the job again at once, for a fresh claim under a new epoch.
    Answered ``204`` whether or not the job was still that assignment (idempotent)."""

    jobId: str
    epoch: int


class GoodbyeRequest(_Msg):
    """A clean exit: the coordinator shows the agent ``DOWN`` at once (not ``READY`` until its
    grace passes) and queues again any job still ASSIGNED to it. Answered ``204``."""


class _JobEvent(_Msg):
    seq: int = Field(ge=1)
    jobId: str
    epoch: int


class StartedEvent(_JobEvent):
    type: Literal["started"] = "started"
    at: str


class LogEvent(_JobEvent):
    type: Literal["log"] = "log"
    data: str


class FinishedEvent(_JobEvent):
    type: Literal["finished"] = "finished"
    at: str
    state: JobState
    exitCode: int | None
    runtimeMs: int
    # Shown to users as is (`jobs list`, `jobs get`): no control characters.
    reason: Annotated[str | None, Field(max_length=200), HumanText] = None
    # "TERM"/"KILL" when the agent stopped the job, else the job's own fatal signal; absent
    # from agents older than the field.
    signal: str | None = Field(default=None, pattern=r"^[A-Z0-9]{1,12}$")


class UsageEvent(_JobEvent):
    type: Literal["usage"] = "usage"
    cpuSeconds: float = Field(ge=0)
    gbSeconds: float = Field(ge=0)
    gpuSeconds: float = Field(ge=0)
    gpuUtilSeconds: float | None = None
    # Additive: GPU-memory GB-seconds (from NVML's per-process figures, where the driver gives
    # them) and the GPU model the job's GPU-seconds are priced at (a job's GPUs are one model).
    gpuMemoryGbSeconds: float | None = Field(default=None, ge=0)
    gpuModel: Annotated[str | None, Field(max_length=200), HumanText] = None


class HandbackEvent(_JobEvent):
    """The agent stopped the job without a result (it is shutting down with shutdown =
    "handback"): the job goes back to the queue for another attempt, under a new epoch."""

    type: Literal["handback"] = "handback"
    at: str


JobEvent = Annotated[StartedEvent | LogEvent | FinishedEvent | UsageEvent | HandbackEvent,
                     Field(discriminator="type")]


class EventBatch(_Msg):
    events: list[JobEvent] = Field(max_length=MAX_EVENTS_PER_BATCH)


class Rejection(_Msg):
    seq: int
    code: str


class EventsResponse(_Msg):
    appliedThrough: int
    rejected: list[Rejection]
