"""Store records → public API models. One place decides how a job or agent looks on the wire."""

from __future__ import annotations

from common.clock import millis_to_rfc3339
from common.models import Agent, ArraySummary, Attempt, Capacity, Dependency, Job, JobArray, ResourcesOut, Retry, Usage
from common.states import JobState
from coordinator.services.arrays import array_state
from coordinator.store.base import AgentRecord, ArrayRecord, AttemptRecord, JobRecord


def attempt_view(attempt: AttemptRecord) -> Attempt:
    return Attempt(
        agentId=attempt.agent_id, epoch=attempt.epoch, state=attempt.state,
        assignedAt=millis_to_rfc3339(attempt.assigned_at) or "", startedAt=millis_to_rfc3339(attempt.started_at),
        finishedAt=millis_to_rfc3339(attempt.finished_at), exitCode=attempt.exit_code, reason=attempt.reason,
        usage=Usage(cpuSeconds=attempt.cpu_seconds, gpuSeconds=attempt.gpu_seconds, gbSeconds=attempt.gb_seconds,
                    gpuMemoryGbSeconds=attempt.gpu_memory_gb_seconds, gpuUtilSeconds=attempt.gpu_util_seconds),
    )


def _sum_known(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def job_view(job: JobRecord, position: int | None = None) -> Job:
    """``position``: the job's place in the queue while QUEUED (``Store.queue_positions``)."""
    usage = None
    if job.cpu_seconds is not None:
        usage = Usage(cpuSeconds=job.cpu_seconds, gpuSeconds=job.gpu_seconds or 0.0, gbSeconds=job.gb_seconds or 0.0,
                      gpuMemoryGbSeconds=_sum_known([a.gpu_memory_gb_seconds for a in job.attempts]),
                      gpuUtilSeconds=_sum_known([a.gpu_util_seconds for a in job.attempts]))
    return Job(
        id=job.id,
        state=job.state,
        type="COMMAND",
        command=job.command,
        name=job.name,
        labels=job.labels,
        resources=ResourcesOut(**job.resources) if job.resources is not None else None,
        env=job.env,
        timeoutSeconds=job.timeout_seconds,
        createdAt=millis_to_rfc3339(job.created_at) or "",
        startedAt=millis_to_rfc3339(job.started_at),
        finishedAt=millis_to_rfc3339(job.finished_at),
        exitCode=job.exit_code,
        runtimeMs=job.runtime_ms,
        agentId=job.agent_id,
        usage=usage,
        reason=job.reason,
        signal=job.signal,
        priority=job.priority,
        attempts=[attempt_view(attempt) for attempt in job.attempts],
        retry=Retry(**job.retry) if job.retry is not None else None,
        dependsOn=[Dependency(jobId=job_id, condition=condition) for job_id, condition in job.depends_on],  # type: ignore[arg-type]
        notBefore=millis_to_rfc3339(job.not_before) if job.state == JobState.QUEUED else None,
        arrayId=job.array_id,
        arrayIndex=job.array_index,
        submittedBy=job.submitted_by,
        position=position,
    )


def array_view(array: ArrayRecord) -> JobArray:
    return JobArray(
        id=array.id, state=array_state(array.count, array.summary), name=array.name, count=array.count,
        maxParallel=array.max_parallel, createdAt=millis_to_rfc3339(array.created_at) or "",
        submittedBy=array.submitted_by,
        summary=ArraySummary(**{state.value: count for state, count in array.summary.items()}),
    )


def agent_view(agent: AgentRecord) -> Agent:
    return Agent(
        id=agent.id,
        name=agent.name,
        state=agent.state,
        labels=agent.labels,
        capacity=Capacity(**agent.capacity),
        lastHeartbeatAt=millis_to_rfc3339(agent.last_heartbeat_at),
        currentJobs=agent.current_jobs,
        version=agent.version,
        registeredAt=millis_to_rfc3339(agent.registered_at) or "",
    )
