"""Agent settings: defaults, then a TOML file (``--config``), then flags."""

from __future__ import annotations

import hashlib
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import ConfigError, load_toml
from common.failover import split_urls

# The unprivileged user jobs run as under a root agent; `tanvrit-agentd install` creates it.
DEFAULT_JOB_USER = "tanvrit-job"

# Like systemd's DynamicUser range: outside what useradd hands out to people and system users.
DEFAULT_JOB_UID_RANGE = "61184-65519"


def parse_uid_range(text: str) -> tuple[int, int] | None:
    """``"LO-HI"`` (inclusive) as ``(LO, HI)``; ``""`` means no range (None): every job runs as
    the job user itself. Raises ``ValueError`` naming what is wrong."""
    if not text.strip():
        return None
    low, sep, high = text.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"job_uid_range must be \"LO-HI\" (e.g. {DEFAULT_JOB_UID_RANGE!r}) or \"\", not {text!r}")
    lo, hi = int(low), int(high)
    if not 0 < lo <= hi < 2**32 - 1:
        raise ValueError(f"job_uid_range {text!r}: need 0 < LO <= HI < 4294967295 (uid 0 is root)")
    return lo, hi


@dataclass
class AgentConfig:
    # One coordinator base URL, or several separated by commas (replicas of one cluster, tried
    # in order; see ``coordinator_urls``).
    coordinator: str
    registration_token: str
    data_dir: Path
    name: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    # Capacity offered to the coordinator; None means "what the host has".
    cpus: float | None = None
    memory_mb: int | None = None
    gpus: int | None = None
    # What a job gets when it does not say.
    default_cpus: float = 1.0
    default_memory_mb: int = 1024
    default_pids: int = 4096
    # The user jobs run as. None: DEFAULT_JOB_USER when the agent runs as root, else the agent's
    # own user (it cannot switch; see docs/configuration.md). A user with uid 0 is refused
    # unless allow_root_jobs is set, and then every job start logs a warning.
    run_as: str | None = None
    allow_root_jobs: bool = False
    # Under a root agent with the default job user: each running job gets its own uid and gid
    # from this inclusive range ("" turns that off: all jobs share the job user). See job_user.py.
    job_uid_range: str = DEFAULT_JOB_UID_RANGE
    # Where job work directories go: never inside data_dir (the agent's credentials and spool).
    # None: <temp dir>/tanvrit-jobs-<hash of data_dir>.
    work_dir: Path | None = None
    kill_grace_seconds: float = 10.0
    shutdown: str = "finish"  # or "handback"
    max_spooled_log_bytes: int = 64 * 1024 * 1024
    # "auto": cgroup v2, else v1, else none (with a loud warning); "none": never.
    cgroups: str = "auto"
    meter_interval_seconds: float = 1.0
    usage_report_seconds: float = 30.0
    # GPUs: every NVML call is abandoned after this long (a hung driver cannot stall the agent).
    nvml_timeout_seconds: float = 10.0
    # How often NVML is asked whether released (or busy) GPUs are free of processes.
    gpu_poll_seconds: float = 2.0
    # One lock file per GPU UUID, shared by every agent on the host.
    gpu_lock_dir: Path = Path("/run/tanvrit-agentd/gpus")

    @property
    def coordinator_urls(self) -> list[str]:
        """The coordinator base URLs in the order the agent tries them."""
        return split_urls(self.coordinator)

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / "agent.json"

    @property
    def spool_path(self) -> Path:
        return self.data_dir / "spool.sqlite3"

    @property
    def work_root(self) -> Path:
        if self.work_dir is not None:
            return self.work_dir
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:8]
        return Path(tempfile.gettempdir()) / f"tanvrit-jobs-{digest}"

    @property
    def jobs_root(self) -> Path:
        """Agent-only: each running job's output and exit status, kept across agent restarts."""
        return self.data_dir / "jobs"


_TOML_KEYS: dict[str, type | tuple[type, ...]] = {
    "coordinator": (str, list), "registration_token": str, "data_dir": str, "name": str, "labels": dict,
    "cpus": (int, float), "memory_mb": int, "gpus": int, "default_cpus": (int, float), "default_memory_mb": int,
    "default_pids": int, "run_as": str, "allow_root_jobs": bool, "work_dir": str, "job_uid_range": str,
    "kill_grace_seconds": (int, float), "shutdown": str,
    "max_spooled_log_bytes": int, "cgroups": str, "meter_interval_seconds": (int, float),
    "usage_report_seconds": (int, float), "nvml_timeout_seconds": (int, float), "gpu_poll_seconds": (int, float),
    "gpu_lock_dir": str,
}


def coordinator_list(value: str | list[Any] | tuple[Any, ...]) -> str:
    """The coordinator setting (a URL, a comma list, or a TOML list / repeated flag of either)
    as one comma list of http(s) URLs. Raises ``ConfigError`` naming a bad entry."""
    parts = [value] if isinstance(value, str) else list(value)
    urls: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise ConfigError(f"coordinator must be a URL or a list of URLs, not {part!r}")
        for url in part.split(","):
            url = url.strip().rstrip("/")
            if not url:
                continue
            scheme, sep, rest = url.partition("://")
            if not (sep and scheme.lower() in ("http", "https") and rest):
                raise ConfigError(f"coordinator {url!r} is not an http:// or https:// URL")
            if url not in urls:
                urls.append(url)
    if not urls:
        raise ConfigError("missing setting 'coordinator' (flag --coordinator or [agent] in --config)")
    return ",".join(urls)


def load_agent_config(config_file: Path | None, overrides: dict[str, Any]) -> AgentConfig:
    """Merge the TOML file's ``[agent]`` table with flag overrides; raise ``ConfigError``."""
    values: dict[str, Any] = {}
    if config_file is not None:
        table = load_toml(config_file).get("agent", {})
        for key, value in table.items():
            if key not in _TOML_KEYS:
                raise ConfigError(f"{config_file}: unknown option agent.{key}")
            if not isinstance(value, _TOML_KEYS[key]):
                raise ConfigError(f"{config_file}: agent.{key} has the wrong type")
            values[key] = value
    labels = {**values.get("labels", {}), **overrides.pop("labels", {})}
    values.update({key: value for key, value in overrides.items() if value is not None})
    values["labels"] = {str(k): str(v) for k, v in labels.items()}
    for required in ("coordinator", "registration_token", "data_dir"):
        if not values.get(required):
            flag = "--" + required.replace("_", "-")
            raise ConfigError(f"missing setting {required!r} (flag {flag} or [agent] in --config)")
    if values.get("shutdown", "finish") not in {"finish", "handback"}:
        raise ConfigError("shutdown must be 'finish' or 'handback'")
    if values.get("cgroups", "auto") not in {"auto", "none"}:
        raise ConfigError("cgroups must be 'auto' or 'none'")
    for positive in ("nvml_timeout_seconds", "gpu_poll_seconds"):
        if positive in values and not values[positive] > 0:
            raise ConfigError(f"{positive} must be more than 0")
    if "job_uid_range" in values:
        try:
            parse_uid_range(values["job_uid_range"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if "gpu_lock_dir" in values:
        values["gpu_lock_dir"] = Path(values["gpu_lock_dir"])
    values["data_dir"] = Path(values["data_dir"])
    if values.get("work_dir"):
        values["work_dir"] = Path(values["work_dir"])
        if values["work_dir"].resolve().is_relative_to(values["data_dir"].resolve()):
            raise ConfigError("work_dir must be outside data_dir: jobs must not reach the agent's credentials "
                              "and spool")
    values["coordinator"] = coordinator_list(values["coordinator"])
    return AgentConfig(**values)
