"""Global options and how they resolve (flags over environment over the profile), and the one
place that builds an API client from them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cli import oauth
from cli.api import ApiClient, on_first_reachable
from cli.config import (
    ENV_URL,
    Config,
    ConfigFileError,
    Resolved,
    Setting,
    config_lock,
    config_path,
    load_config,
    resolve,
    save_config,
)

NOT_LOGGED_IN = ("not logged in (profile '{profile}'): run `tanvrit-compute auth login`, pass --token, or set "
                 "TANVRIT_COMPUTE_TOKEN (`tanvrit-compute local up` prints a token and saves a `local` profile)")


@dataclass
class CliContext:
    flags: dict[str, str | None]
    as_json: bool = False
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    config_file: Path | None = None
    _config: Config | None = None

    def __post_init__(self) -> None:
        if self.config_file is None:
            self.config_file = config_path(self.env)

    @property
    def config(self) -> Config:
        if self._config is None:
            assert self.config_file is not None
            try:
                self._config = load_config(self.config_file)
            except ConfigFileError as exc:
                raise click.ClickException(str(exc)) from exc
        return self._config

    def save_config(self) -> None:
        assert self.config_file is not None
        try:
            save_config(self.config_file, self.config)
        except ConfigFileError as exc:
            raise click.ClickException(str(exc)) from exc

    def resolved(self) -> Resolved:
        return resolve(self.flags, self.env, self.config)

    def url(self, given: str | None = None) -> str:
        """The coordinator's base URL (``given``, else the resolved one), checked to be http(s).

        Raises ``click.UsageError`` (exit 2) naming where a URL without a scheme came from."""
        settings = self.resolved()
        setting = Setting(given, "flag") if given else settings.url
        assert setting.value is not None
        return checked_url(setting, settings.profile_name)

    def token(self, now: datetime | None = None) -> Setting:
        """The bearer token to send, and where it came from; OAuth profiles are refreshed here.

        Raises ``click.ClickException`` when there is none.
        """
        settings = self.resolved()
        if settings.token.source in ("flag", "env"):
            return settings.token
        if oauth.has_oauth_credentials(settings.profile):
            assert settings.url.value is not None and self.config_file is not None
            cached = oauth.cached_token(settings.profile, now or datetime.now(UTC))
            if cached is not None:
                return Setting(cached, "oauth")
            try:
                with config_lock(self.config_file):
                    # Another process may have refreshed while we waited for the lock: re-read.
                    self._config = None
                    settings = self.resolved()
                    profile, moment = settings.profile, now or datetime.now(UTC)
                    token, updates = on_first_reachable(
                        self.url(), lambda http: oauth.access_token(profile, http, moment))
                    if updates:
                        self.config.profile(settings.profile_name).update(updates)
                        self.save_config()
            except ConfigFileError as exc:
                raise click.ClickException(str(exc)) from exc
            return Setting(token, "oauth")
        if settings.token.value:
            return settings.token
        raise click.ClickException(NOT_LOGGED_IN.format(profile=settings.profile_name))

    def client(self, *, workspace: str | None = None) -> ApiClient:
        settings = self.resolved()
        return ApiClient(self.url(), self.token().value, workspace=workspace or settings.workspace.value)

    def workspace_id(self, client: ApiClient) -> str:
        """The active workspace's id: the resolved one, else the only workspace the caller can see."""
        chosen = self.resolved().workspace.value
        if chosen:
            return chosen
        page: dict[str, Any] = client.request("GET", "/v0/workspaces", params={"limit": 2})
        if len(page["items"]) == 1:
            return str(page["items"][0]["id"])
        raise click.ClickException("several workspaces: pass --workspace or run `tanvrit-compute workspaces use ID`")


def checked_url(setting: Setting, profile_name: str) -> str:
    """``setting``'s URL (or comma list of URLs: replicas, tried in order) without trailing
    slashes; a usage error naming the bad one if any is not http(s)://HOST..."""
    urls = [part.strip().rstrip("/") for part in (setting.value or "").split(",") if part.strip()] or [""]
    for url in urls:
        scheme, sep, rest = url.partition("://")
        if sep and scheme.lower() in ("http", "https") and rest:
            continue
        where = {"flag": f"--url {url}", "env": f"{ENV_URL}={url}",
                 "profile": f"the url {url} of profile '{profile_name}'"}.get(setting.source, url)
        hint = f"http://{rest if sep else url}"
        fix = (f"; fix it with `tanvrit-compute --profile {profile_name} auth login --url {hint}`"
               if setting.source == "profile" else "")
        raise click.UsageError(f"{where} is not an http:// or https:// URL: did you mean {hint}?{fix}")
    return ",".join(urls)


pass_context = click.make_pass_decorator(CliContext)
