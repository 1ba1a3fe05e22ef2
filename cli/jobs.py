"""``tanvrit-compute jobs ...``: submit, follow, inspect and cancel jobs."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from cli import output
from cli.api import ApiClient, Unreachable
from cli.arrays import ARRAY_FIELDS, array_body
from cli.completion import complete_job_ids
from cli.context import CliContext, pass_context
from cli.options import MOMENT, list_options, query
from cli.output import Column
from cli.progress import JobWatcher, StatusLine
from common.config import ConfigError, load_toml, parse_key_values
from common.states import JobState

# Exit codes of `jobs run` for ends that have no exit code of their own (documented in README).
EXIT_TIMED_OUT = 124
EXIT_LOST = 125
EXIT_CANCELLED = 130
EXIT_NOT_RUN = 126  # FAILED without an exit code of its own (it could not start), as a shell's 126
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT", "LOST"})
# How long an interrupted `jobs run` waits for the cancel to take (the agent's TERM grace is 10 s).
CANCEL_WAIT_SECONDS = 30.0

def _attempt_count(attempts: Any) -> str:
    return str(len(attempts)) if isinstance(attempts, list) and attempts else "-"


def _attempts(attempts: Any) -> str:
    """One attempt a line under the ``attempts:`` heading: epoch, how it ended, exit code, agent."""
    if not isinstance(attempts, list) or not attempts:
        return "-"
    lines = [f"#{a.get('epoch')} {a.get('state')}"
             + (f" exit {a['exitCode']}" if a.get("exitCode") is not None else "")
             + (f" ({a['reason']})" if a.get("reason") else "")
             + f" on {a.get('agentId')}, cpu {output.plain((a.get('usage') or {}).get('cpuSeconds'))}s"
             for a in attempts]
    return "\n  ".join(lines)


def _dependencies(depends_on: Any) -> str:
    if not isinstance(depends_on, list) or not depends_on:
        return "-"
    return ", ".join(f"{d.get('jobId')}:{d.get('condition')}" for d in depends_on)


def _retry(policy: Any) -> str:
    if not isinstance(policy, dict):
        return "-"
    text = f"{policy.get('attempts')} attempts on {'/'.join(policy.get('on') or [])}"
    if policy.get("exitCodes"):
        text += f" (exit codes {', '.join(str(code) for code in policy['exitCodes'])})"
    return text + f", backoff {policy.get('backoffSeconds')}s"


JOB_COLUMNS = (
    Column("ID", "id"), Column("NAME", "name", output.truncated(20)), Column("STATE", "state", output.state),
    Column("EXIT", "exitCode"), Column("REASON", "reason"), Column("PRI", "priority"),
    Column("TRIES", "attempts", _attempt_count), Column("AGENT", "agentId"),
    Column("CREATED", "createdAt", output.ago),
    Column("COMMAND", "command", output.truncated(40)),
)
JOB_FIELDS = (
    Column("id", "id"), Column("name", "name"), Column("state", "state", output.state), Column("command", "command"),
    Column("labels", "labels"), Column("resources", "resources"), Column("timeout", "timeoutSeconds"),
    Column("agent", "agentId"), Column("exit code", "exitCode"), Column("runtime ms", "runtimeMs"),
    Column("reason", "reason"), Column("signal", "signal"), Column("priority", "priority"), Column("usage", "usage"),
    Column("retry", "retry", _retry), Column("depends on", "dependsOn", _dependencies),
    Column("not before", "notBefore"), Column("attempts", "attempts", _attempts),
    Column("created", "createdAt", output.ago),
    Column("started", "startedAt", output.ago), Column("finished", "finishedAt", output.ago),
    Column("array", "arrayId"), Column("array index", "arrayIndex"), Column("submitted by", "submittedBy"),
    Column("position", "position"),
)


@click.group()
def jobs() -> None:
    """Submit, follow, inspect and cancel jobs."""


def exit_code_for(job: dict[str, Any]) -> int:
    """The exit code of `jobs run` for a finished job: its own, as a shell would give it (128 + n
    for a job killed by signal n), or one of the documented codes for ends without one. Never
    1, which means an API error."""
    state = job["state"]
    signum = _signal_number(job.get("signal"))
    if state == "SUCCEEDED":
        return 0
    if state == "TIMED_OUT":
        # As GNU timeout: 124, or 128 + 9 when the job outlived its grace and was KILLed.
        return 128 + signal.SIGKILL if signum == signal.SIGKILL else EXIT_TIMED_OUT
    if state == "CANCELLED":
        return EXIT_CANCELLED
    if state == "LOST":
        return EXIT_LOST
    code = job.get("exitCode")
    if signum is not None:
        return 128 + signum
    if isinstance(code, int) and code < 0:  # a coordinator older than `signal` reported -n
        return min(128 - code, 255)
    return code if isinstance(code, int) and 0 < code < 256 else EXIT_NOT_RUN


def _signal_number(name: Any) -> int | None:
    if not isinstance(name, str) or not name:
        return None
    try:
        return int(signal.Signals["SIG" + name.upper().removeprefix("SIG")])
    except KeyError:
        return None


def follow_log(client: ApiClient, job_id: str, *, out: Any = None,
               before_output: Callable[[], None] | None = None) -> dict[str, Any]:
    """Print the job's log as it comes; return the job once it is terminal. Reconnects
    with ``Last-Event-ID`` if the stream drops, so nothing is printed twice.

    ``before_output`` is called once, just before the first chunk is written.
    """
    out = out or sys.stdout
    last_id: str | None = None
    failures = 0
    while True:
        try:
            for event in client.stream_events(f"/v0/jobs/{job_id}/logs?follow=true", last_id):
                if event.event == "log":
                    if before_output is not None:
                        before_output()
                        before_output = None
                    out.write(json.loads(event.data))
                    out.flush()
                    last_id = event.id
                elif event.event == "end":
                    job: dict[str, Any] = client.request("GET", f"/v0/jobs/{job_id}")
                    return job
        except Unreachable:
            failures += 1
            if failures > 5:
                raise
            time.sleep(min(0.2 * 2 ** failures, 3.0))
        else:
            failures = 0


def _manifest(path: str) -> dict[str, Any]:
    try:
        if path == "-":
            loaded: Any = json.loads(sys.stdin.read())
        elif path.endswith(".toml"):
            loaded = load_toml(Path(path))
        else:
            loaded = json.loads(Path(path).read_text())
    except (OSError, ValueError, ConfigError) as exc:
        raise click.BadParameter(f"cannot read manifest {path}: {exc}", param_hint="-f") from exc
    if not isinstance(loaded, dict):
        raise click.BadParameter(f"manifest {path} must be an object (the body of POST /v0/jobs)", param_hint="-f")
    return loaded


CONDITIONS = ("succeeded", "failed", "finished")
RETRY_OUTCOMES = ("FAILED", "TIMED_OUT", "LOST")


def parse_after(values: tuple[str, ...]) -> list[dict[str, str]]:
    """``--after job_...[:condition]`` values as ``dependsOn`` entries (condition default succeeded)."""
    found = []
    for value in values:
        job_id, _, condition = value.partition(":")
        condition = condition or "succeeded"
        if not job_id or condition not in CONDITIONS:
            raise click.BadParameter(f"{value!r}: give JOB_ID or JOB_ID:CONDITION, the condition one of "
                                     f"{', '.join(CONDITIONS)}", param_hint="--after")
        found.append({"jobId": job_id, "condition": condition})
    return found


def apply_retry(body: dict[str, Any], attempts: int | None, on: tuple[str, ...], exit_codes: tuple[int, ...],
                backoff: int | None) -> None:
    """Layer the ``--retry*`` flags over the manifest's ``retry`` (the server validates the result)."""
    if attempts is None and not on and not exit_codes and backoff is None:
        return
    retry = dict(body.get("retry") or {})
    if attempts is not None:
        retry["attempts"] = attempts
    if "attempts" not in retry:
        raise click.UsageError("--retry-on, --retry-exit-code and --retry-backoff need --retry N (how many attempts)")
    if on:
        retry["on"] = [outcome.upper() for outcome in on]
    if exit_codes:
        retry["exitCodes"] = list(exit_codes)
    if backoff is not None:
        retry["backoffSeconds"] = backoff
    body["retry"] = retry


def build_body(manifest: dict[str, Any] | None, command: tuple[str, ...], labels: tuple[str, ...],
               env: tuple[str, ...], timeout: int | None, name: str | None,
               resources: dict[str, Any]) -> dict[str, Any]:
    """The ``POST /v0/jobs`` body: the manifest, with flags layered over it."""
    body: dict[str, Any] = dict(manifest) if manifest else {}
    body.setdefault("type", "COMMAND")
    if command:
        # One argument is a shell line; several are argv, quoted so the shell sees them as given.
        body["command"] = shlex.join(command) if len(command) > 1 else command[0]
    if "command" not in body:
        raise click.UsageError("give a command after --, or a manifest with -f")
    try:
        if labels:
            body["labels"] = {**body.get("labels", {}), **parse_key_values(labels)}
        if env:
            body["env"] = {**body.get("env", {}), **parse_key_values(env, "env")}
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if timeout is not None:
        body["timeoutSeconds"] = timeout
    if name is not None:
        body["name"] = name
    if resources:
        body["resources"] = {**(body.get("resources") or {}), **resources}
    return body


class _Terminated(Exception):
    """SIGTERM arrived: handled like a Ctrl-C with nobody there to answer a question."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def _wait_terminal(client: ApiClient, job_id: str, line: StatusLine, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = client.request("GET", f"/v0/jobs/{job_id}")
    while job["state"] not in TERMINAL and time.monotonic() < deadline:
        line.update(f"{job_id}: {job['state']} · cancelling (the agent stops it: TERM, then KILL)")
        time.sleep(0.2)
        job = client.request("GET", f"/v0/jobs/{job_id}")
    line.clear()
    return job


def _interrupted(client: ApiClient, job_id: str, *, interactive: bool) -> NoReturn:
    """Ctrl-C while following: ask (on a terminal) or cancel (without one); never returns."""
    if interactive:
        try:
            cancel = click.confirm(f"\nCancel job {job_id}?", default=True, err=True)
        except click.Abort:  # a second Ctrl-C, or end of input, at the question
            cancel = False
    else:
        cancel = True
    if not cancel:
        click.echo(f"job {job_id} keeps running; follow it with `tanvrit-compute jobs logs -f {job_id}`", err=True)
        sys.exit(EXIT_CANCELLED)
    click.echo(f"cancelling job {job_id}", err=True)
    client.request("POST", f"/v0/jobs/{job_id}:cancel")
    try:
        job = _wait_terminal(client, job_id, StatusLine(), CANCEL_WAIT_SECONDS)
    except KeyboardInterrupt:
        sys.exit(EXIT_CANCELLED)
    if job["state"] not in TERMINAL:
        click.echo(f"job {job_id} is still {job['state']}; the cancel goes on in the background", err=True)
        sys.exit(EXIT_CANCELLED)
    click.echo(f"job {job_id} {job['state']}", err=True)
    sys.exit(exit_code_for(job))


@jobs.command("run")
@click.option("-f", "--file", "manifest", metavar="PATH",
              help="A job manifest, TOML or JSON (- reads JSON from stdin): the body of POST /v0/jobs. "
                   "Flags override its fields.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Run only on agents with this label; repeatable.")
@click.option("--timeout", type=int, help="Seconds before the job is stopped (default 3600).")
@click.option("--cpus", type=float, help="CPU cores.")
@click.option("--memory", "memory_mb", type=int, help="Memory limit in MiB.")
@click.option("--gpus", type=int, help="Whole GPUs.")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="Environment variable; repeatable.")
@click.option("--name", help="Display name.")
@click.option("--priority", type=click.IntRange(0, 100), metavar="0-100",
              help="Higher is claimed first (default 50); a member may give at most the workspace's maximum.")
@click.option("--retry", "retry_attempts", type=click.IntRange(1, 10), metavar="N",
              help="Up to N attempts: a failed attempt (see --retry-on) is queued again.")
@click.option("--retry-on", multiple=True, type=click.Choice(RETRY_OUTCOMES, case_sensitive=False),
              help="Retry only these outcomes (default all three); repeatable.")
@click.option("--retry-exit-code", "retry_exit_codes", multiple=True, type=click.IntRange(1, 255), metavar="CODE",
              help="Retry a FAILED attempt only with this exit code; repeatable.")
@click.option("--retry-backoff", type=click.IntRange(0, 86_400), metavar="SECONDS",
              help="Wait this long in the queue before the next attempt (default 0).")
@click.option("--after", "after", multiple=True, metavar="JOB_ID[:COND]",
              help="Wait until that job has ended: succeeded (default), failed or finished; repeatable.")
@click.option("--idempotency-key",
              help="Submitting twice with the same key returns the first job (default: a fresh random key, "
                   "so a retry on another coordinator URL cannot run the job twice).")
@click.option("--array", "array_spec", metavar="0-LAST[%MAX]",
              help="Submit a job array of tasks 0 to LAST (as Slurm's --array=0-99%10: at most MAX at once); "
                   "each task gets TANVRIT_ARRAY_INDEX and TANVRIT_ARRAY_COUNT. Prints the array and returns.")
@click.option("--array-count", type=click.IntRange(min=1), help="Submit a job array of this many tasks.")
@click.option("--max-parallel", type=click.IntRange(min=1), help="With --array-count: at most this many at once.")
@click.option("--detach", "-d", is_flag=True, help="Print the job id and return at once.")
@click.argument("command", nargs=-1)
@pass_context
def run(ctx: CliContext, manifest: str | None, labels: tuple[str, ...], timeout: int | None, cpus: float | None,
        memory_mb: int | None, gpus: int | None, env: tuple[str, ...], name: str | None, priority: int | None,
        retry_attempts: int | None, retry_on: tuple[str, ...], retry_exit_codes: tuple[int, ...],
        retry_backoff: int | None, after: tuple[str, ...], idempotency_key: str | None, array_spec: str | None,
        array_count: int | None, max_parallel: int | None, detach: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND (after --) as a job, print its log as it comes, and exit with its exit code.

    \b
    Exit codes: the job's own (128+n when signal n killed it); 124 timed out
    (137 when it had to be KILLed after the grace), 125 lost (its agent
    vanished), 126 failed without running, 130 cancelled or interrupted;
    1 API error; 2 coordinator unreachable.
    Ctrl-C asks whether to cancel the job (without a terminal on stdin, and on
    SIGTERM, it cancels). With --json the log goes to stderr and the finished
    job's JSON to stdout.

    \b
    Examples:
      tanvrit-compute jobs run -- sh -c 'nproc; uname -sm'
      tanvrit-compute jobs run --label gpu=a100 --gpus 1 -- python train.py
      tanvrit-compute jobs run -f job.toml --detach
      tanvrit-compute jobs run --retry 3 --retry-backoff 30 -- ./flaky.sh
      tanvrit-compute jobs run --after job_01h...:succeeded -- ./report.sh
      tanvrit-compute jobs run --array 0-99%10 -- ./sweep.sh   (then: arrays get ID)
    """
    resources = query(cpus=cpus, memoryMb=memory_mb, gpus=gpus)
    body = build_body(_manifest(manifest) if manifest else None, command, labels, env, timeout, name, resources)
    if priority is not None:
        body["priority"] = priority
    apply_retry(body, retry_attempts, retry_on, retry_exit_codes, retry_backoff)
    if after:
        body["dependsOn"] = [*body.get("dependsOn", []), *parse_after(after)]
    array = array_body(array_spec, array_count, max_parallel)
    if array is not None:
        body["array"] = array
    client = ctx.client()
    # Always keyed: when the answer is lost (a replica died, a proxy timed out) the request goes
    # to the next URL with the same key, and the coordinator returns the job it already made.
    headers = {"Idempotency-Key": idempotency_key or f"cli-{uuid.uuid4()}"}
    created = client.request("POST", "/v0/jobs", json_body=body, headers=headers)
    if "array" in body:
        # Thousands of logs do not interleave usefully: the array is shown, its tasks run on.
        output.show_item(ctx, created, ARRAY_FIELDS)
        if not ctx.as_json:
            click.echo(f"follow it with `tanvrit-compute arrays get {created['id']}`; its tasks: "
                       f"`tanvrit-compute jobs list --array {created['id']}`", err=True)
        return
    if detach:
        output.show_done(ctx, created, created["id"])
        return
    job_id = created["id"]
    line = StatusLine()
    if not line.enabled:
        click.echo(f"job {job_id} queued", err=True)
    watcher = JobWatcher(ctx.client, job_id, line, created["state"]).start()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        job = follow_log(client, job_id, out=sys.stderr if ctx.as_json else sys.stdout, before_output=watcher.stop)
        watcher.stop()
    except KeyboardInterrupt:
        watcher.stop()
        _interrupted(client, job_id, interactive=sys.stdin.isatty())
    except _Terminated:
        watcher.stop()
        _interrupted(client, job_id, interactive=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if ctx.as_json:
        output.print_json(job)
    else:
        runtime = f"{job['runtimeMs'] / 1000:.1f}s" if job.get("runtimeMs") is not None else "-"
        click.echo(f"job {job['id']} {output.state(job['state'])} (exit code {output.plain(job.get('exitCode'))}, "
                   f"{runtime} on {output.plain(job.get('agentId'))})", err=True)
    sys.exit(exit_code_for(job))


@jobs.command("get")
@click.argument("job_id", shell_complete=complete_job_ids)
@pass_context
def get(ctx: CliContext, job_id: str) -> None:
    """Show one job."""
    output.show_item(ctx, ctx.client().request("GET", f"/v0/jobs/{job_id}"), JOB_FIELDS)


def _job_states(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--state`` values in upper case; one that names no state is refused here, before any request."""
    for value in values:
        if value.upper() not in JobState.__members__:
            states = ", ".join(repr(state.value) for state in JobState)
            raise click.BadParameter(f"{value!r} is not one of {states}", ctx, param)
    return tuple(value.upper() for value in values)


@jobs.command("list")
@click.option("--state", "states", multiple=True, metavar="STATE", callback=_job_states,
              help=f"Only jobs in this state ({', '.join(JobState)}); repeatable.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Only jobs with this label; repeatable.")
@click.option("--since", type=MOMENT, help="Created after this: 30m, 2h, 7d or an RFC 3339 time.")
@click.option("--until", type=MOMENT, help="Created before this: 30m, 2h, 7d or an RFC 3339 time.")
@click.option("--array", "array_id", metavar="ARRAY_ID", help="Only the tasks of this job array.")
@list_options
@pass_context
def list_jobs(ctx: CliContext, states: tuple[str, ...], labels: tuple[str, ...], since: str | None,
              until: str | None, array_id: str | None, paging: dict[str, Any]) -> None:
    """List jobs, newest first."""
    params: list[tuple[str, Any]] = list(paging.items())
    params += [("state", s) for s in states] + [("label", label) for label in labels]
    params += list(query(createdAfter=since, createdBefore=until, arrayId=array_id).items())
    page = ctx.client().request("GET", "/v0/jobs", params=params)
    output.show_page(ctx, page, JOB_COLUMNS, empty="no jobs")


@jobs.command("logs")
@click.argument("job_id", shell_complete=complete_job_ids)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
@click.option("--tail", type=click.IntRange(min=0), help="Only the last N lines.")
@pass_context
def logs(ctx: CliContext, job_id: str, follow: bool, tail: int | None) -> None:
    """Print a job's log (stdout and stderr, interleaved as they came)."""
    client = ctx.client()
    if follow:
        follow_log(client, job_id)
        return
    sys.stdout.write(client.request("GET", f"/v0/jobs/{job_id}/logs", params=query(tail=tail)))


@jobs.command("cancel")
@click.argument("job_ids", nargs=-1, required=True, shell_complete=complete_job_ids)
@pass_context
def cancel(ctx: CliContext, job_ids: tuple[str, ...]) -> None:
    """Cancel jobs (idempotent: a finished job is left as it is)."""
    client = ctx.client()
    for job_id in job_ids:
        job = client.request("POST", f"/v0/jobs/{job_id}:cancel")
        output.show_done(ctx, job, f"{job['id']} {output.state(job['state'])}")
