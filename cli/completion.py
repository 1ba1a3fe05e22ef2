"""Shell completion (click's mechanism) and ``tanvrit-compute completion bash|zsh``.

Job and agent ids complete from the API when a coordinator is configured; any failure there
completes nothing rather than printing an error into the user's prompt.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem, get_completion_class

from cli.context import CliContext

PROG_NAME = "tanvrit-compute"
COMPLETE_VAR = "_TANVRIT_COMPUTE_COMPLETE"


def _context_from(ctx: click.Context) -> CliContext:
    # While completing, click parses without running group callbacks, so ctx.obj is not set:
    # rebuild it from the root's parsed options.
    params = ctx.find_root().params
    return CliContext(flags={key: params.get(key) for key in ("profile", "url", "token", "workspace")})


def _complete_ids(ctx: click.Context, path: str, incomplete: str, *, describe: str) -> list[CompletionItem]:
    try:
        client = _context_from(ctx).client()
        try:
            page: dict[str, Any] = client.request("GET", path, params={"limit": 100})
        finally:
            client.close()
    except Exception:  # completion must never break the shell
        return []
    return [CompletionItem(item["id"], help=str(item.get(describe) or ""))
            for item in page.get("items", []) if str(item["id"]).startswith(incomplete)]


def complete_job_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _complete_ids(ctx, "/v0/jobs", incomplete, describe="state")


def complete_agent_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _complete_ids(ctx, "/v0/agents", incomplete, describe="name")


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash:  echo 'eval "$(tanvrit-compute completion bash)"' >> ~/.bashrc
    zsh:   echo 'eval "$(tanvrit-compute completion zsh)"' >> ~/.zshrc
    fish:  tanvrit-compute completion fish > ~/.config/fish/completions/tanvrit-compute.fish
    """
    shell_class = get_completion_class(shell)
    assert shell_class is not None  # the Choice above only admits shells click knows
    click.echo(shell_class(ctx.find_root().command, {}, PROG_NAME, COMPLETE_VAR).source())
