"""Global options and how they resolve: flags over environment."""

from __future__ import annotations

from dataclasses import dataclass

import click

from cli.api import ApiClient

DEFAULT_URL = "http://127.0.0.1:8470"


@dataclass
class CliContext:
    url: str | None
    token: str | None
    workspace: str | None
    as_json: bool

    def client(self) -> ApiClient:
        if not self.token:
            raise click.UsageError("no token: pass --token or set TANVRIT_COMPUTE_TOKEN "
                                   "(`tanvrit-compute local up` prints one)")
        return ApiClient(self.url or DEFAULT_URL, self.token, workspace=self.workspace)


pass_context = click.make_pass_decorator(CliContext)
