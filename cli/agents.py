"""``tanvrit-compute agents ...``"""

from __future__ import annotations

import click

from cli import output
from cli.context import CliContext, pass_context


@click.group()
def agents() -> None:
    """Inspect, drain and resume agents."""


@agents.command("list")
@pass_context
def list_agents(ctx: CliContext) -> None:
    """List agents."""
    page = ctx.client().request("GET", "/v0/agents", params={"limit": 500})
    if ctx.as_json:
        output.print_json(page)
        return
    output.print_table(
        ["ID", "NAME", "STATE", "CPUS", "MEMORY", "GPUS", "JOBS", "HEARTBEAT"],
        [[a["id"], a["name"], output.state(a["state"]), f"{a['capacity']['cpus']:g}",
          f"{a['capacity']['memoryMb']} MiB", str(a["capacity"]["gpus"]), str(len(a["currentJobs"])),
          output.relative_time(a["lastHeartbeatAt"])] for a in page["items"]],
    )


@agents.command("get")
@click.argument("agent_id")
@pass_context
def get(ctx: CliContext, agent_id: str) -> None:
    """Show one agent."""
    agent = ctx.client().request("GET", f"/v0/agents/{agent_id}")
    if ctx.as_json:
        output.print_json(agent)
        return
    for key, value in agent.items():
        click.echo(f"{key + ':':<16} {output.state(value) if key == 'state' else value}")


@agents.command("drain")
@click.argument("agent_id")
@pass_context
def drain(ctx: CliContext, agent_id: str) -> None:
    """Let the agent finish its jobs and take no new ones."""
    agent = ctx.client().request("POST", f"/v0/agents/{agent_id}:drain")
    output.print_json(agent) if ctx.as_json else click.echo(f"{agent['id']} {agent['state']}")


@agents.command("resume")
@click.argument("agent_id")
@pass_context
def resume(ctx: CliContext, agent_id: str) -> None:
    """Make a drained agent take jobs again."""
    agent = ctx.client().request("POST", f"/v0/agents/{agent_id}:resume")
    output.print_json(agent) if ctx.as_json else click.echo(f"{agent['id']} {agent['state']}")
