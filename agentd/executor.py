"""Run one job as a subprocess and report how it ended.

Lifecycle (one job)::

    prepare workdir ─▶ spawn /bin/sh -c CMD (own session, clean env)
          │                 │ output ─▶ on_output(bytes)          (stdout+stderr, in order)
          │                 ├─ exits ─────────────────────────────▶ SUCCEEDED / FAILED
          │                 ├─ timeout ─▶ TERM, grace, KILL ──────▶ TIMED_OUT
          │                 └─ cancel  ─▶ TERM, grace, KILL ──────▶ CANCELLED
          └──────────────────────────────────────────────────────▶ workdir removed

The process tree is signalled as a whole (process group here; the job's cgroup where the
isolation backend provides one), so a job never leaves a process behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import trio

from common.clock import Clock, SystemClock
from common.states import JobState, result_state_for_exit

READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ExecSpec:
    job_id: str
    command: str
    env: Mapping[str, str]
    timeout_seconds: float
    workdir: Path
    grace_seconds: float = 10.0


@dataclass(frozen=True)
class Outcome:
    state: JobState
    exit_code: int | None
    reason: str | None
    started_at: datetime
    finished_at: datetime
    runtime_ms: int


def job_environment(spec: ExecSpec) -> dict[str, str]:
    """A clean environment: PATH, HOME (the job's workdir), the job's own env, its id."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": str(spec.workdir),
           "TANVRIT_JOB_ID": spec.job_id}
    env.update(spec.env)
    return env


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


async def execute(
    spec: ExecSpec,
    on_output: Callable[[bytes], None],
    cancel: trio.Event,
    *,
    clock: Clock | None = None,
    on_started: Callable[[datetime], None] | None = None,
) -> Outcome:
    """Run ``spec`` to its end; never raises for the job's own failures."""
    clock = clock or SystemClock()
    started_at = clock.now()
    begin = time.monotonic()
    try:
        spec.workdir.mkdir(parents=True, exist_ok=True)
        process = await trio.lowlevel.open_process(
            ["/bin/sh", "-c", spec.command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd=spec.workdir, env=job_environment(spec), start_new_session=True,
        )
    except OSError as exc:
        shutil.rmtree(spec.workdir, ignore_errors=True)
        finished = clock.now()
        on_output(f"tanvrit-agentd: could not start the job: {exc}\n".encode())
        return Outcome(JobState.FAILED, None, "start_failed", started_at, finished, 0)
    if on_started is not None:
        on_started(started_at)
    stop_reason: JobState | None = None
    assert process.stdout is not None

    async def pump() -> None:
        async with process.stdout:  # type: ignore[union-attr]
            while chunk := await process.stdout.receive_some(READ_CHUNK):  # type: ignore[union-attr]
                on_output(bytes(chunk))

    async def stop(reason: JobState) -> None:
        nonlocal stop_reason
        stop_reason = reason
        _signal_group(process.pid, signal.SIGTERM)
        with trio.move_on_after(spec.grace_seconds):
            await process.wait()
        _signal_group(process.pid, signal.SIGKILL)

    async def watch(nursery: trio.Nursery) -> None:
        with trio.move_on_after(spec.timeout_seconds):
            await cancel.wait()
            await stop(JobState.CANCELLED)
            return
        await stop(JobState.TIMED_OUT)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery)
            async with trio.open_nursery() as inner:
                inner.start_soon(pump)
                await process.wait()
                # The shell is gone; its children may still hold the pipe open.
                _signal_group(process.pid, signal.SIGKILL)
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await process.wait()
        shutil.rmtree(spec.workdir, ignore_errors=True)
    finished_at = clock.now()
    runtime_ms = int((time.monotonic() - begin) * 1000)
    code = process.returncode
    if stop_reason is not None:
        return Outcome(stop_reason, code, stop_reason.value.lower(), started_at, finished_at, runtime_ms)
    assert code is not None
    if code < 0:
        return Outcome(JobState.FAILED, code, f"killed_by_signal_{-code}", started_at, finished_at, runtime_ms)
    return Outcome(result_state_for_exit(code), code, None, started_at, finished_at, runtime_ms)
