"""Coordinator settings: defaults, overridden by a TOML file, overridden by flags.

``load_settings`` validates the file against typed section models (unknown keys, wrong types
and impossible values are refused with a message naming the key); every option is documented
in ``docs/configuration.md``. To add an option: add the field to ``Settings`` and to its
section model below, and document it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.config import ConfigError, load_toml
from common.protocol import MAX_HEARTBEAT_WAIT_SECONDS
from coordinator.billing import BillingConfig
from coordinator.billing import config_from_toml as billing_config_from_toml
from coordinator.client_address import Network, parse_networks
from coordinator.services.retention import RetentionPolicy
from coordinator.store.errors import UnknownDatabaseUrl
from coordinator.store.factory import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT_SECONDS, DatabaseUrl, parse_database_url
from coordinator.webhooks import DeliveryConfig, delivery_config_from_toml


@dataclass(frozen=True)
class PlanLimit:
    """A plan's request rate limit: ``rate`` req/s sustained, bursts at up to ``burst_rate`` req/s
    lasting at most ``burst_seconds``."""

    rate: float
    burst_rate: float
    burst_seconds: float = 10.0


# 20 per second sustained, bursts of 100 per second for up to 10 s: a CLI logging in, a browser
# loading the console, an agent retrying with a revoked token all stay far below it.
DEFAULT_UNAUTHENTICATED_LIMIT = PlanLimit(20, 100, 10)

DEFAULT_RATE_LIMITS: dict[str, PlanLimit | None] = {
    "hobby": None,
    "payg": PlanLimit(100, 200, 10),
    "team": PlanLimit(1000, 2000, 10),
    # Enterprise limits are negotiated: unlimited until the config sets [rate_limits.enterprise].
    "enterprise": None,
}



@dataclass
class Settings:
    data_dir: Path
    bind: str = "127.0.0.1:8470"
    default_plan: str = "hobby"
    heartbeat_interval_seconds: float = 5.0
    # The fleet's heartbeat budget (coordinator/cadence.py): the interval handed to agents grows
    # from heartbeat_interval_seconds up to heartbeat_interval_max_seconds so that all the live
    # agents together beat about this often a second (0: off, always heartbeat_interval_seconds).
    # The liveness grace grows with it.
    heartbeats_per_second: float = 50.0
    heartbeat_interval_max_seconds: float = 60.0
    max_body_bytes: int = 1024 * 1024
    idempotency_window_seconds: int = 24 * 3600
    sse_keepalive_seconds: float = 15.0
    # Connections (coordinator/http_server.py): idle keep-alive and request-head deadline,
    # whole-body deadline, one blocked write, connections open at once.
    idle_timeout_seconds: float = 5.0
    body_timeout_seconds: float = 30.0
    send_timeout_seconds: float = 30.0
    max_connections: int = 12_000
    # Peers whose X-Forwarded-For is believed (coordinator/client_address.py): the load balancers.
    # Empty: the header is ignored, as any client could send it.
    trusted_proxies: tuple[Network, ...] = ()
    allow_private_webhooks: bool = False
    # Liveness: an agent silent for the grace is DOWN; silent for grace + lease, its jobs are LOST.
    agent_grace_seconds: float = 30.0
    lease_seconds: float = 300.0
    # A job ASSIGNED to an agent that does not start it within this is queued again (new epoch).
    assignment_lease_seconds: float = 30.0
    liveness_check_seconds: float = 1.0
    # Several replicas on one database: the leader (liveness, meter tick, invoices) holds a lease
    # of this length, and every replica tries to take or renew it this often (coordinator/leader.py).
    leader_lease_seconds: float = 15.0
    leader_renew_seconds: float = 5.0
    access_token_ttl_seconds: int = 15 * 60
    refresh_token_ttl_seconds: int = 30 * 86400
    invitation_ttl_seconds: int = 7 * 86400
    console_session_ttl_seconds: int = 12 * 3600
    # How long this process may reuse a token or membership it read (coordinator/identity_cache.py):
    # changes made through this process apply at once; elsewhere (another replica), within this.
    identity_cache_seconds: float = 1.0
    metrics_token: str | None = None
    rate_limits: dict[str, PlanLimit | None] = field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    # Requests without credentials, and failed authentications, per client address (None: no
    # limit, e.g. behind a proxy that hides client addresses). See docs/security.md.
    unauthenticated_rate_limit: PlanLimit | None = field(default_factory=lambda: DEFAULT_UNAUTHENTICATED_LIMIT)
    billing: BillingConfig = field(default_factory=BillingConfig)
    webhook_delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    # The store (coordinator/store/factory.py): None is the SQLite file in the data dir.
    database_url: str | None = None
    # PostgreSQL only: connections each replica keeps at most, and how long one statement may run
    # before the server cancels it (0: no limit). See coordinator/store/postgres_core.py.
    store_pool_size: int = DEFAULT_POOL_SIZE
    store_statement_timeout_seconds: float = 0.0
    # PostgreSQL only: how long a request waits for a pooled connection before its 503.
    store_pool_timeout_seconds: float = DEFAULT_POOL_TIMEOUT_SECONDS
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "coordinator.sqlite3"

    @property
    def database(self) -> DatabaseUrl:
        """The database to open: ``database_url`` if set, else the data dir's SQLite file."""
        if self.database_url is None:
            return parse_database_url(self.database_path)
        return parse_database_url(self.database_url)

    @property
    def url_file(self) -> Path:
        return self.data_dir / "coordinator.url"


# --- the TOML file -----------------------------------------------------------------------

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Server(_Section):
    bind: str | None = None
    default_plan: Literal["hobby", "payg", "team", "enterprise"] | None = None
    heartbeat_interval_seconds: float | None = Field(default=None, gt=0, le=3600)
    heartbeats_per_second: float | None = Field(default=None, ge=0, le=1_000_000)
    # An agent holds its heartbeat at most MAX_HEARTBEAT_WAIT_SECONDS: a longer interval would
    # leave it without a held request (no prompt cancels) for the rest of the interval.
    heartbeat_interval_max_seconds: float | None = Field(default=None, gt=0, le=MAX_HEARTBEAT_WAIT_SECONDS)
    sse_keepalive_seconds: float | None = Field(default=None, gt=0, le=3600)
    max_body_bytes: int | None = Field(default=None, ge=1024, le=64 * 1024 * 1024)
    idempotency_window_seconds: int | None = Field(default=None, ge=1)
    agent_grace_seconds: float | None = Field(default=None, gt=0)
    lease_seconds: float | None = Field(default=None, ge=0)
    assignment_lease_seconds: float | None = Field(default=None, gt=0, le=3600)
    liveness_check_seconds: float | None = Field(default=None, gt=0, le=60)
    leader_lease_seconds: float | None = Field(default=None, gt=0, le=3600)
    leader_renew_seconds: float | None = Field(default=None, gt=0, le=3600)
    idle_timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    body_timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    send_timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    max_connections: int | None = Field(default=None, ge=1, le=1_000_000)
    trusted_proxies: list[str] | None = Field(default=None, max_length=1000)


class _Auth(_Section):
    access_token_ttl_seconds: int | None = Field(default=None, ge=1, le=86400)
    refresh_token_ttl_seconds: int | None = Field(default=None, ge=60)
    invitation_ttl_seconds: int | None = Field(default=None, ge=60)
    console_session_ttl_seconds: int | None = Field(default=None, ge=60, le=30 * 86400)
    identity_cache_seconds: float | None = Field(default=None, ge=0, le=60)


class _Retention(_Section):
    interval_seconds: float | None = Field(default=None, ge=60, le=7 * 86400)
    job_logs_days: float | None = Field(default=None, ge=0)
    webhook_deliveries_days: float | None = Field(default=None, ge=0)
    usage_detail_days: float | None = Field(default=None, ge=0)
    auth_failures_days: float | None = Field(default=None, ge=0)
    batch: int | None = Field(default=None, ge=1, le=100_000)


class _Limit(_Section):
    rate: float = Field(gt=0)
    burst_rate: float = Field(gt=0)
    burst_seconds: float = Field(default=10.0, ge=0, le=3600)


class _RateLimits(_Section):
    payg: _Limit | Literal[False] | None = None
    team: _Limit | Literal[False] | None = None
    enterprise: _Limit | Literal[False] | None = None
    # Per client address, for requests without credentials and failed authentications.
    unauthenticated: _Limit | Literal[False] | None = None


class _Metrics(_Section):
    token: str | None = Field(default=None, min_length=16)


class _Webhooks(_Section):
    allow_private: bool | None = None


class _Store(_Section):
    url: str | None = Field(default=None, min_length=1)
    pool_size: int | None = Field(default=None, ge=1, le=1000)
    statement_timeout_seconds: float | None = Field(default=None, ge=0, le=86400)
    pool_timeout_seconds: float | None = Field(default=None, gt=0, le=3600)


class ConfigFile(_Section):
    server: _Server = Field(default_factory=_Server)
    store: _Store = Field(default_factory=_Store)
    auth: _Auth = Field(default_factory=_Auth)
    rate_limits: _RateLimits = Field(default_factory=_RateLimits)
    retention: _Retention = Field(default_factory=_Retention)
    metrics: _Metrics = Field(default_factory=_Metrics)
    webhooks: _Webhooks = Field(default_factory=_Webhooks)


def _describe(exc: ValidationError, source: Path) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"] if not str(part).startswith(("_Limit", "literal[")))
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown option {key}")
        else:
            problems.append(f"{key}: {error['msg']}")
    return f"{source}: " + "; ".join(dict.fromkeys(problems))


def load_settings(data_dir: Path, config_file: Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then ``config_file`` (TOML), then ``overrides`` that are not None (the
    command line, and the environment it reads: ``database_url`` from ``TANVRIT_DATABASE_URL``).

    Raises ``ConfigError`` naming each bad key.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        raw = load_toml(config_file)
        # [billing] and the delivery options of [webhooks] have parsers of their own
        # (coordinator/billing.py, coordinator/webhooks.py) that name bad keys the same way.
        billing_table = raw.pop("billing", {})
        webhooks_table = raw.get("webhooks", {})
        if isinstance(webhooks_table, dict):
            raw["webhooks"] = {key: value for key, value in webhooks_table.items() if key == "allow_private"}
        try:
            parsed = ConfigFile.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, config_file)) from exc
        if not isinstance(billing_table, dict):
            raise ConfigError(f"{config_file}: [billing] must be a table")
        values["billing"] = billing_config_from_toml(billing_table, str(config_file))
        values["webhook_delivery"] = delivery_config_from_toml(webhooks_table, str(config_file))
        chosen_retention = {key: value for key, value in parsed.retention.model_dump().items() if value is not None}
        if chosen_retention:
            values["retention"] = RetentionPolicy(**chosen_retention)
        for section in (parsed.server, parsed.auth):
            values.update({key: value for key, value in section.model_dump().items() if value is not None})
        if parsed.server.trusted_proxies is not None:
            try:
                values["trusted_proxies"] = parse_networks(parsed.server.trusted_proxies)
            except ValueError as exc:
                raise ConfigError(f"{config_file}: server.trusted_proxies: {exc}") from exc
        if parsed.webhooks.allow_private is not None:
            values["allow_private_webhooks"] = parsed.webhooks.allow_private
        if parsed.metrics.token is not None:
            values["metrics_token"] = parsed.metrics.token
        if parsed.store.url is not None:
            try:
                parse_database_url(parsed.store.url)
            except UnknownDatabaseUrl as exc:
                raise ConfigError(f"{config_file}: store.url: {exc}") from exc
            values["database_url"] = parsed.store.url
        if parsed.store.pool_size is not None:
            values["store_pool_size"] = parsed.store.pool_size
        if parsed.store.statement_timeout_seconds is not None:
            values["store_statement_timeout_seconds"] = parsed.store.statement_timeout_seconds
        if parsed.store.pool_timeout_seconds is not None:
            values["store_pool_timeout_seconds"] = parsed.store.pool_timeout_seconds
        limits = dict(DEFAULT_RATE_LIMITS)
        for plan in ("payg", "team", "enterprise"):
            chosen = getattr(parsed.rate_limits, plan)
            if chosen is False:
                limits[plan] = None
            elif chosen is not None:
                if chosen.burst_rate < chosen.rate:
                    raise ConfigError(f"{config_file}: rate_limits.{plan}.burst_rate must be at least its rate")
                limits[plan] = PlanLimit(chosen.rate, chosen.burst_rate, chosen.burst_seconds)
        values["rate_limits"] = limits
        anonymous = parsed.rate_limits.unauthenticated
        if anonymous is False:
            values["unauthenticated_rate_limit"] = None
        elif anonymous is not None:
            if anonymous.burst_rate < anonymous.rate:
                raise ConfigError(f"{config_file}: rate_limits.unauthenticated.burst_rate must be at least its rate")
            values["unauthenticated_rate_limit"] = PlanLimit(anonymous.rate, anonymous.burst_rate,
                                                             anonymous.burst_seconds)
    values.update({key: value for key, value in overrides.items() if value is not None})
    settings = Settings(data_dir=data_dir, **values)
    if settings.leader_renew_seconds >= settings.leader_lease_seconds:
        where = f"{config_file}: " if config_file is not None else ""
        raise ConfigError(f"{where}server.leader_renew_seconds ({settings.leader_renew_seconds:g}) must be below "
                          f"server.leader_lease_seconds ({settings.leader_lease_seconds:g})")
    return settings
