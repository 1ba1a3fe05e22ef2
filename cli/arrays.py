"""``tanvrit-compute arrays ...``: job arrays (submitted with ``jobs run --array``)."""

from __future__ import annotations

import re
import sys
from typing import Any

import click

from cli import output
from cli.context import CliContext, pass_context
from cli.options import list_options, query
from cli.output import Column

_WAITING = ("QUEUED", "ASSIGNED", "RUNNING")
ARRAY_COLUMNS = (
    Column("ID", "id"), Column("NAME", "name", output.truncated(20)), Column("STATE", "state", output.state),
    Column("COUNT", "count"), Column("MAX", "maxParallel"), Column("QUEUED", "summary", lambda s: str(s["QUEUED"])),
    Column("RUNNING", "summary", lambda s: str(s["ASSIGNED"] + s["RUNNING"])),
    Column("DONE", "summary", lambda s: str(sum(v for k, v in s.items() if k not in _WAITING))),
    Column("CREATED", "createdAt", output.ago),
)
ARRAY_FIELDS = (
    Column("id", "id"), Column("name", "name"), Column("state", "state", output.state), Column("count", "count"),
    Column("max parallel", "maxParallel"), Column("summary", "summary", lambda s: ", ".join(
        f"{state} {count}" for state, count in s.items() if count)),
    Column("submitted by", "submittedBy"), Column("created", "createdAt", output.ago),
)

# Slurm's --array=0-99%10: indexes 0 to 99, at most 10 at once. Arrays are indexed from 0.
_SPEC = re.compile(r"^(?P<first>\d+)-(?P<last>\d+)(?:%(?P<parallel>\d+))?$")


def parse_array_spec(text: str) -> dict[str, int]:
    """``0-99%10`` → ``{"count": 100, "maxParallel": 10}``; click.BadParameter otherwise."""
    match = _SPEC.match(text.strip())
    if match is None:
        raise click.BadParameter(f"{text!r}: give 0-LAST or 0-LAST%MAX_PARALLEL, as 0-99%10", param_hint="--array")
    first, last = int(match["first"]), int(match["last"])
    if first != 0 or last < first:
        raise click.BadParameter(f"{text!r}: task indexes run from 0 (0-{max(last, 0)}); "
                                 "TANVRIT_ARRAY_INDEX gives each task its own", param_hint="--array")
    spec = {"count": last + 1}
    if match["parallel"] is not None:
        spec["maxParallel"] = int(match["parallel"])
    return spec


def array_body(spec: str | None, count: int | None, max_parallel: int | None) -> dict[str, int] | None:
    """The ``array`` field from ``--array`` or ``--array-count``/``--max-parallel`` (not both)."""
    if spec is not None and (count is not None or max_parallel is not None):
        raise click.UsageError("give --array, or --array-count with --max-parallel, not both")
    if spec is not None:
        return parse_array_spec(spec)
    if count is None:
        if max_parallel is not None:
            raise click.UsageError("--max-parallel needs --array-count (or --array 0-N%M)")
        return None
    return {"count": count, **({"maxParallel": max_parallel} if max_parallel is not None else {})}


@click.group()
def arrays() -> None:
    """Inspect and cancel job arrays (submit one with `jobs run --array 0-99%10`)."""


@arrays.command("get")
@click.argument("array_id")
@pass_context
def get(ctx: CliContext, array_id: str) -> None:
    """Show one array and how many of its tasks are in each state."""
    output.show_item(ctx, ctx.client().request("GET", f"/v0/arrays/{array_id}"), ARRAY_FIELDS)


@arrays.command("list")
@list_options
@pass_context
def list_arrays(ctx: CliContext, paging: dict[str, Any]) -> None:
    """List arrays, newest first."""
    output.show_page(ctx, ctx.client().request("GET", "/v0/arrays", params=list(paging.items())), ARRAY_COLUMNS,
                     empty="no job arrays")


@arrays.command("cancel")
@click.argument("array_ids", nargs=-1, required=True)
@pass_context
def cancel(ctx: CliContext, array_ids: tuple[str, ...]) -> None:
    """Cancel every task of arrays not yet finished (idempotent)."""
    client = ctx.client()
    for array_id in array_ids:
        array = client.request("POST", f"/v0/arrays/{array_id}:cancel")
        output.show_done(ctx, array, f"{array['id']} {output.state(array['state'])}")


@arrays.command("logs")
@click.argument("array_id")
@click.option("--index", type=click.IntRange(min=0), help="Only this task's log.")
@click.option("--tail", type=click.IntRange(min=0), help="Only the last N lines of each task.")
@pass_context
def logs(ctx: CliContext, array_id: str, index: int | None, tail: int | None) -> None:
    """Print the logs of an array's tasks, each after a `==> task N (job_...) <==` line."""
    sys.stdout.write(ctx.client().request("GET", f"/v0/arrays/{array_id}/logs", params=query(index=index, tail=tail)))
