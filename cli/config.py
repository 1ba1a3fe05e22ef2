"""The user's CLI configuration: named profiles, one per coordinator, in one TOML file.

The file is ``$XDG_CONFIG_HOME/tanvrit-compute/config.toml`` (``~/.config/...`` by default)::

    default_profile = "local"

    [profiles.local]
    url = "http://127.0.0.1:8470"    # or several (replicas): "http://a:8470,http://b:8470" or a list
    token = "tcp_pat_..."            # a personal access token, or instead:
    refresh_token = "tcp_ort_..."    # OAuth credentials that `auth print-token` exchanges
    workspace = "ws_..."             # optional active workspace

It holds secrets, so it is always written with mode 0600 (its directory 0700), atomically: a
crash mid-write leaves the old file, never half a file.

Which value wins is decided by ``resolve``: flags over environment over the profile.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

DEFAULT_URL = "http://127.0.0.1:8470"
DEFAULT_PROFILE = "default"

ENV_URL = "TANVRIT_COMPUTE_URL"
ENV_TOKEN = "TANVRIT_COMPUTE_TOKEN"
ENV_WORKSPACE = "TANVRIT_COMPUTE_WORKSPACE"
ENV_PROFILE = "TANVRIT_COMPUTE_PROFILE"

# Keys a profile may hold; anything else in the file is kept but ignored, so that an older CLI
# does not destroy what a newer one wrote.
PROFILE_KEYS = ("url", "token", "workspace", "refresh_token", "client_id", "client_secret", "access_token",
                "access_token_expires_at", "access_token_issued_at")
CREDENTIAL_KEYS = ("token", "refresh_token", "client_id", "client_secret", "access_token", "access_token_expires_at",
                   "access_token_issued_at")


class ConfigFileError(Exception):
    """The config file exists but cannot be read or written; the message says why and where."""


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tanvrit-compute" / "config.toml"


@dataclass
class Config:
    """The whole file. ``profiles`` maps a name to that profile's table."""

    default_profile: str | None = None
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def profile(self, name: str) -> dict[str, Any]:
        """The named profile's table, created (empty) if absent."""
        return self.profiles.setdefault(name, {})


def load_config(path: Path) -> Config:
    """Read ``path``; a missing file is an empty config. Raises ``ConfigFileError``."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        return Config()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigFileError(f"cannot read {path}: {exc}") from exc
    profiles = raw.pop("profiles", {})
    default = raw.pop("default_profile", None)
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise ConfigFileError(f"{path}: [profiles.NAME] must be tables")
    if default is not None and not isinstance(default, str):
        raise ConfigFileError(f"{path}: default_profile must be a string")
    return Config(default_profile=default, profiles=profiles, extra=raw)


def save_config(path: Path, config: Config) -> None:
    """Write ``config`` to ``path`` atomically with mode 0600. Raises ``ConfigFileError``."""
    document: dict[str, Any] = dict(config.extra)
    if config.default_profile is not None:
        document["default_profile"] = config.default_profile
    document["profiles"] = {name: {k: v for k, v in table.items() if v is not None}
                            for name, table in config.profiles.items()}
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkstemp creates the file 0600, so the secret is never readable by others, not even briefly.
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".toml")
        try:
            with os.fdopen(fd, "wb") as handle:
                tomli_w.dump(document, handle)
            os.chmod(temp, 0o600)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigFileError(f"cannot write {path}: {exc}") from exc


@contextmanager
def config_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``path`` (``config.toml.lock``) for a read-modify-write.

    Refresh tokens rotate: two CLI processes refreshing the same profile at once would present
    the same refresh token twice, which the coordinator treats as theft and answers by revoking
    the whole token family. Under this lock the second process re-reads the file and finds the
    token the first one just stored. Raises ``ConfigFileError``."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle = (path.parent / (path.name + ".lock")).open("a")
    except OSError as exc:
        raise ConfigFileError(f"cannot lock {path}: {exc}") from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Setting:
    """A resolved value and where it came from (``flag``, ``env``, ``profile`` or ``default``)."""

    value: str | None
    source: str


@dataclass(frozen=True)
class Resolved:
    profile_name: str
    profile: Mapping[str, Any]
    url: Setting
    token: Setting
    workspace: Setting


def profile_name(flag: str | None, env: Mapping[str, str], config: Config) -> str:
    return flag or env.get(ENV_PROFILE) or config.default_profile or DEFAULT_PROFILE


def resolve(flags: Mapping[str, str | None], env: Mapping[str, str], config: Config) -> Resolved:
    """Flags over environment over the profile: a pure decision over the three sources.

    ``flags`` has the keys ``profile``, ``url``, ``token`` and ``workspace`` (``None`` where not
    given). The profile's token is its PAT; OAuth credentials are left to the caller (see
    ``cli.oauth``), which is why ``token.value`` may be ``None`` with a profile that can log in.
    """
    name = profile_name(flags.get("profile"), env, config)
    profile = config.profiles.get(name, {})

    def pick(key: str, env_name: str, default: str | None = None) -> Setting:
        if flags.get(key):
            return Setting(flags[key], "flag")
        if env.get(env_name):
            return Setting(env[env_name], "env")
        if isinstance(profile.get(key), list):
            # A TOML list of URLs: the same as a comma list.
            return Setting(",".join(str(item) for item in profile[key]), "profile")
        if profile.get(key):
            return Setting(str(profile[key]), "profile")
        return Setting(default, "default")

    return Resolved(
        profile_name=name, profile=profile, url=pick("url", ENV_URL, DEFAULT_URL),
        token=pick("token", ENV_TOKEN), workspace=pick("workspace", ENV_WORKSPACE),
    )
