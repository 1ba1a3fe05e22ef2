"""``tanvrit-compute jobs ...``"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from cli import output
from cli.api import ApiClient, Unreachable
from cli.context import CliContext, pass_context
from common.config import ConfigError, load_toml, parse_key_values

# Exit codes of `jobs run` for ends that have no exit code of their own (documented in README).
EXIT_TIMED_OUT = 124
EXIT_LOST = 125
EXIT_CANCELLED = 130


@click.group()
def jobs() -> None:
    """Submit, inspect and cancel jobs."""


def exit_code_for(job: dict[str, Any]) -> int:
    state = job["state"]
    if state == "SUCCEEDED":
        return 0
    if state == "TIMED_OUT":
        return EXIT_TIMED_OUT
    if state == "CANCELLED":
        return EXIT_CANCELLED
    if state == "LOST":
        return EXIT_LOST
    code = job.get("exitCode")
    return code if isinstance(code, int) and 0 < code < 256 else 1


def follow_log(client: ApiClient, job_id: str) -> dict[str, Any]:
    """Print the job's log as it comes; return the job once it is terminal. Reconnects
    with ``Last-Event-ID`` if the stream drops, so nothing is printed twice."""
    last_id: str | None = None
    failures = 0
    while True:
        try:
            for event in client.stream_events(f"/v0/jobs/{job_id}/logs?follow=true", last_id):
                if event.event == "log":
                    sys.stdout.write(json.loads(event.data))
                    sys.stdout.flush()
                    last_id = event.id
                elif event.event == "end":
                    job: dict[str, Any] = client.request("GET", f"/v0/jobs/{job_id}")
                    return job
        except Unreachable:
            failures += 1
            if failures > 5:
                raise
        else:
            failures = 0


def _manifest(path: Path) -> dict[str, Any]:
    try:
        if path.suffix == ".toml":
            return load_toml(path)
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    except (OSError, ValueError, ConfigError) as exc:
        raise click.BadParameter(f"cannot read manifest {path}: {exc}", param_hint="-f") from exc


@jobs.command("run")
@click.option("-f", "--file", "manifest", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A job manifest (TOML or JSON), the body of POST /v0/jobs.")
@click.option("--label", "labels", multiple=True, help="Selector key=value; repeatable.")
@click.option("--timeout", type=int, help="Seconds before the job is stopped (default 3600).")
@click.option("--cpus", type=float, help="CPU cores.")
@click.option("--memory", "memory_mb", type=int, help="Memory limit in MiB.")
@click.option("--gpus", type=int, help="Whole GPUs.")
@click.option("--env", "env", multiple=True, help="Environment NAME=value; repeatable.")
@click.option("--name", help="Display name.")
@click.option("--detach", "-d", is_flag=True, help="Print the job id and return at once.")
@click.argument("command", nargs=-1)
@pass_context
def run(ctx: CliContext, manifest: Path | None, labels: tuple[str, ...], timeout: int | None, cpus: float | None,
        memory_mb: int | None, gpus: int | None, env: tuple[str, ...], name: str | None, detach: bool,
        command: tuple[str, ...]) -> None:
    """Run COMMAND (after --) as a job, print its log, and exit with its exit code.

    Exit codes without a job exit code: 124 timed out, 125 lost, 130 cancelled.
    """
    body: dict[str, Any] = _manifest(manifest) if manifest else {"type": "COMMAND"}
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
    resources = {k: v for k, v in {"cpus": cpus, "memoryMb": memory_mb, "gpus": gpus}.items() if v is not None}
    if resources:
        body["resources"] = {**body.get("resources", {}), **resources}
    client = ctx.client()
    created = client.request("POST", "/v0/jobs", json_body=body)
    if detach:
        output.print_json(created) if ctx.as_json else click.echo(created["id"])
        return
    click.echo(f"job {created['id']} queued", err=True)
    try:
        job = follow_log(client, created["id"])
    except KeyboardInterrupt:
        if sys.stdin.isatty() and click.confirm(f"\ncancel job {created['id']}?", default=True, err=True):
            client.request("POST", f"/v0/jobs/{created['id']}:cancel")
            click.echo(f"job {created['id']} cancelled", err=True)
        else:
            click.echo(f"detached; job {created['id']} goes on", err=True)
        sys.exit(EXIT_CANCELLED)
    if ctx.as_json:
        output.print_json(job)
    else:
        click.echo(f"job {job['id']} {job['state']} (exit code {job.get('exitCode')}, "
                   f"{job.get('runtimeMs')} ms on {job.get('agentId')})", err=True)
    sys.exit(exit_code_for(job))


@jobs.command("get")
@click.argument("job_id")
@pass_context
def get(ctx: CliContext, job_id: str) -> None:
    """Show one job."""
    job = ctx.client().request("GET", f"/v0/jobs/{job_id}")
    if ctx.as_json:
        output.print_json(job)
        return
    for key in ("id", "name", "state", "command", "labels", "resources", "agentId", "exitCode", "runtimeMs",
                "reason", "usage", "createdAt", "startedAt", "finishedAt"):
        value = job.get(key)
        if key == "state":
            value = output.state(str(value))
        click.echo(f"{key + ':':<12} {value if value is not None else '-'}")


@jobs.command("list")
@click.option("--state", "states", multiple=True, help="Only these states; repeatable.")
@click.option("--label", "labels", multiple=True, help="key=value; repeatable.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@pass_context
def list_jobs(ctx: CliContext, states: tuple[str, ...], labels: tuple[str, ...], limit: int) -> None:
    """List jobs, newest first."""
    params: list[tuple[str, str | int]] = [("limit", limit)]
    params += [("state", s.upper()) for s in states] + [("label", label) for label in labels]
    page = ctx.client().request("GET", "/v0/jobs", params=params)
    if ctx.as_json:
        output.print_json(page)
        return
    output.print_table(
        ["ID", "STATE", "EXIT", "AGENT", "CREATED", "COMMAND"],
        [[job["id"], output.state(job["state"]), str(job["exitCode"] if job["exitCode"] is not None else "-"),
          job["agentId"] or "-", output.relative_time(job["createdAt"]), job["command"][:40]]
         for job in page["items"]],
    )


@jobs.command("logs")
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
@click.option("--tail", type=int, help="Only the last N lines.")
@pass_context
def logs(ctx: CliContext, job_id: str, follow: bool, tail: int | None) -> None:
    """Print a job's log."""
    client = ctx.client()
    if follow:
        follow_log(client, job_id)
        return
    params = {"tail": tail} if tail is not None else None
    sys.stdout.write(client.request("GET", f"/v0/jobs/{job_id}/logs", params=params))


@jobs.command("cancel")
@click.argument("job_id")
@pass_context
def cancel(ctx: CliContext, job_id: str) -> None:
    """Cancel a job (idempotent)."""
    job = ctx.client().request("POST", f"/v0/jobs/{job_id}:cancel")
    output.print_json(job) if ctx.as_json else click.echo(f"{job['id']} {job['state']}")
