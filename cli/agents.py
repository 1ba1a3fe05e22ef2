"""``tanvrit-compute agents ...``: inspect, drain, resume and remove agents."""

from __future__ import annotations

import sys
from typing import Any

import click

from cli import output
from cli.api import ApiClient
from cli.completion import complete_agent_ids
from cli.context import CliContext, pass_context
from cli.options import list_options, query
from cli.output import Column
from cli.progress import StatusLine, wait_for_drain


def _memory(value: Any) -> str:
    return "-" if value is None else f"{int(value) / 1024:.1f} GiB" if int(value) >= 1024 else f"{value} MiB"


def _count(value: Any) -> str:
    return str(len(value or []))


AGENT_COLUMNS = (
    Column("ID", "id"), Column("NAME", "name"), Column("STATE", "state", output.state),
    Column("CPUS", "capacity.cpus"), Column("MEMORY", "capacity.memoryMb", _memory), Column("GPUS", "capacity.gpus"),
    Column("JOBS", "currentJobs", _count), Column("HEARTBEAT", "lastHeartbeatAt", output.ago),
    Column("VERSION", "version"),
)
AGENT_FIELDS = (
    Column("id", "id"), Column("name", "name"), Column("state", "state", output.state),
    Column("labels", "labels"), Column("cpus", "capacity.cpus"), Column("memory", "capacity.memoryMb", _memory),
    Column("gpus", "capacity.gpus"), Column("jobs", "currentJobs"), Column("heartbeat", "lastHeartbeatAt", output.ago),
    Column("version", "version"), Column("registered", "registeredAt", output.ago),
)


@click.group()
def agents() -> None:
    """Inspect, drain, resume and remove agents (by id, or by name where it is unique)."""


def agent_id_for(client: ApiClient, ref: str) -> str:
    """``ref`` as an agent id: an ``agt_`` id as it is, else the id of the one agent so named.

    Raises ``click.ClickException`` when no agent, or several, have that name."""
    if ref.startswith("agt_"):
        return ref
    matches: list[str] = []
    params: dict[str, Any] = {"limit": 500}
    while True:
        page = client.request("GET", "/v0/agents", params=params)
        matches += [str(agent["id"]) for agent in page["items"] if agent.get("name") == ref]
        if not page.get("nextCursor"):
            break
        params["cursor"] = page["nextCursor"]
    if not matches:
        raise click.ClickException(f"no agent with id or name '{ref}' (see `tanvrit-compute agents list`)")
    if len(matches) > 1:
        raise click.ClickException(f"{len(matches)} agents are named '{ref}' ({', '.join(matches)}): give an id")
    return matches[0]


@agents.command("list")
@list_options
@pass_context
def list_agents(ctx: CliContext, paging: dict[str, Any]) -> None:
    """List the active workspace's agents."""
    output.show_page(ctx, ctx.client().request("GET", "/v0/agents", params=paging), AGENT_COLUMNS, empty="no agents")


@agents.command("get")
@click.argument("agent_id", metavar="AGENT", shell_complete=complete_agent_ids)
@pass_context
def get(ctx: CliContext, agent_id: str) -> None:
    """Show one agent: labels, capacity, heartbeat, running jobs."""
    client = ctx.client()
    output.show_item(ctx, client.request("GET", f"/v0/agents/{agent_id_for(client, agent_id)}"), AGENT_FIELDS)


@agents.command("drain")
@click.argument("agent_id", metavar="AGENT", shell_complete=complete_agent_ids)
@click.option("--detach", "-d", is_flag=True, help="Return at once instead of waiting until it is DRAINED.")
@pass_context
def drain(ctx: CliContext, agent_id: str, detach: bool) -> None:
    """Let the agent finish its jobs and take no new ones; wait until it is DRAINED.

    Ctrl-C stops waiting; the drain goes on.
    """
    client = ctx.client()
    agent_id = agent_id_for(client, agent_id)
    agent = client.request("POST", f"/v0/agents/{agent_id}:drain")
    if not detach and agent["state"] == "DRAINING":
        try:
            agent = wait_for_drain(client, agent, StatusLine())
        except KeyboardInterrupt:
            click.echo(f"\n{agent_id} is still draining; check with `tanvrit-compute agents get {agent_id}`", err=True)
            sys.exit(130)
    output.show_done(ctx, agent, f"{agent['id']} {output.state(agent['state'])}")


@agents.command("resume")
@click.argument("agent_id", metavar="AGENT", shell_complete=complete_agent_ids)
@pass_context
def resume(ctx: CliContext, agent_id: str) -> None:
    """Make a drained agent take jobs again."""
    client = ctx.client()
    agent = client.request("POST", f"/v0/agents/{agent_id_for(client, agent_id)}:resume")
    output.show_done(ctx, agent, f"{agent['id']} {output.state(agent['state'])}")


@agents.command("rm")
@click.argument("agent_id", metavar="AGENT", shell_complete=complete_agent_ids)
@click.option("--force", is_flag=True, help="Remove it even while it runs jobs.")
@pass_context
def remove(ctx: CliContext, agent_id: str, force: bool) -> None:
    """Deregister an agent and revoke its token (admins only)."""
    client = ctx.client()
    agent_id = agent_id_for(client, agent_id)
    result = client.request("DELETE", f"/v0/agents/{agent_id}", params=query(force="true" if force else None))
    output.show_done(ctx, result or {"id": agent_id, "deleted": True}, f"{agent_id} removed")
