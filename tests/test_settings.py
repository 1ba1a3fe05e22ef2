"""The coordinator's TOML settings: every documented option loads; bad ones are refused by name."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from common.config import ConfigError
from coordinator.billing import BILLING_KEYS
from coordinator.settings import DEFAULT_RATE_LIMITS, ConfigFile, PlanLimit, load_settings
from coordinator.webhooks import DELIVERY_KEYS

ROOT = Path(__file__).resolve().parent.parent

FULL = """
[server]
bind = "127.0.0.1:9000"
default_plan = "payg"
heartbeat_interval_seconds = 2
sse_keepalive_seconds = 7.5
max_body_bytes = 2097152
idempotency_window_seconds = 3600

[auth]
access_token_ttl_seconds = 600
refresh_token_ttl_seconds = 86400
invitation_ttl_seconds = 3600

[rate_limits]
team = false
enterprise = { rate = 5000, burst_rate = 10000, burst_seconds = 30 }

[rate_limits.payg]
rate = 50
burst_rate = 100

[metrics]
token = "0123456789abcdef0123"

[webhooks]
allow_private = true
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(text)
    return path


def test_every_option_loads(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, _write(tmp_path, FULL))
    assert settings.bind == "127.0.0.1:9000" and settings.default_plan == "payg"
    assert settings.heartbeat_interval_seconds == 2.0 and settings.sse_keepalive_seconds == 7.5
    assert settings.max_body_bytes == 2097152 and settings.idempotency_window_seconds == 3600
    assert (settings.access_token_ttl_seconds, settings.refresh_token_ttl_seconds,
            settings.invitation_ttl_seconds) == (600, 86400, 3600)
    assert settings.rate_limits == {"hobby": None, "payg": PlanLimit(50, 100, 10), "team": None,
                                    "enterprise": PlanLimit(5000, 10000, 30)}
    assert settings.metrics_token == "0123456789abcdef0123"
    assert settings.allow_private_webhooks is True


def test_defaults_and_flag_overrides(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, None, bind="0.0.0.0:1", allow_private_webhooks=None)
    assert settings.bind == "0.0.0.0:1" and settings.allow_private_webhooks is False
    assert settings.access_token_ttl_seconds == 900 and settings.rate_limits == DEFAULT_RATE_LIMITS
    from_file = load_settings(tmp_path, _write(tmp_path, FULL), bind="127.0.0.1:1")
    assert from_file.bind == "127.0.0.1:1"


@pytest.mark.parametrize(("text", "message"), [
    ("[server]\nport = 1\n", "unknown option server.port"),
    ("[nonsense]\n", "unknown option nonsense"),
    ("[server]\nheartbeat_interval_seconds = \"5\"\n",
     "server.heartbeat_interval_seconds: Input should be a valid number"),
    ("[server]\ndefault_plan = \"gold\"\n", "server.default_plan: Input should be 'hobby', 'payg', 'team' or"),
    ("[auth]\naccess_token_ttl_seconds = 0\n",
     "auth.access_token_ttl_seconds: Input should be greater than or equal to 1"),
    ("[rate_limits.payg]\nrate = 10\n", "rate_limits.payg.burst_rate: Field required"),
    ("[rate_limits.payg]\nrate = 10\nburst_rate = 5\n", "rate_limits.payg.burst_rate must be at least its rate"),
    ("[metrics]\ntoken = \"short\"\n", "metrics.token: String should have at least 16 characters"),
    ("not toml [", "is not valid TOML"),
])
def test_bad_options_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(tmp_path, _write(tmp_path, text))


def test_serve_refuses_a_bad_config_with_a_message(tmp_path: Path) -> None:
    config = _write(tmp_path, "[server]\nbogus = 1\n")
    result = subprocess.run([sys.executable, "-m", "coordinator", "serve", "--data-dir", str(tmp_path / "d"),
                             "--config", str(config)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert "unknown option server.bogus" in result.stderr
    assert "Traceback" not in result.stderr


def test_documented_options_match_the_loader() -> None:
    """docs/configuration.md's example shows every option the loader accepts, and no others."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    coordinator_part = doc.split("## Coordinator", 1)[1].split("## Agent", 1)[0]
    toml_block = coordinator_part.split("```toml", 1)[1].split("```", 1)[0]
    parsed = tomllib.loads(toml_block)
    load_settings(ROOT, None)  # defaults load
    documented = {f"{table}.{key}" for table, values in parsed.items() for key in values}
    expected = {f"{table}.{key}" for table, section in ConfigFile.model_fields.items()
                for key in section.annotation.model_fields}  # type: ignore[union-attr]
    expected |= {f"billing.{key}" for key in BILLING_KEYS} | {f"webhooks.{key}" for key in DELIVERY_KEYS}
    assert documented == expected


def test_documented_example_loads(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    toml_block = doc.split("## Coordinator", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    settings = load_settings(tmp_path, _write(tmp_path, toml_block))
    assert settings.agent_grace_seconds == 30.0
    assert settings.billing.meter_interval_seconds == 60
    assert settings.webhook_delivery.per_endpoint_concurrency == 4
