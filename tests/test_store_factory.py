"""Store selection by URL: --database, TANVRIT_DATABASE_URL, [store] url, else the data dir's SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError
from coordinator.settings import load_settings
from coordinator.store import factory
from coordinator.store.errors import UnknownDatabaseUrl
from coordinator.store.factory import DatabaseUrl, open_store, parse_database_url

ROOT = Path(__file__).resolve().parents[1]


def _coordinator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != factory.ENV_VAR}
    return subprocess.run([sys.executable, "-m", "coordinator", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**environ, **(env or {})})


def test_urls_name_a_backend() -> None:
    assert parse_database_url(Path("/d/coordinator.sqlite3")) == DatabaseUrl(
        "sqlite", "/d/coordinator.sqlite3", Path("/d/coordinator.sqlite3"))
    assert parse_database_url("sqlite:///var/lib/t/c.db").path == Path("/var/lib/t/c.db")
    assert parse_database_url("relative/c.db").path == Path("relative/c.db")
    assert parse_database_url("postgresql://u:pw@db:5432/t").kind == "postgresql"
    assert parse_database_url("postgres://u@db/t").kind == "postgresql"
    assert parse_database_url("postgresql://u:pw@db:5432/t").redacted() == "postgresql://u:***@db:5432/t"


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://root:hunter2@db/t", r"^unknown database URL scheme 'mysql' in 'mysql://root:\*\*\*@db/t': "
                                  r"give sqlite:///PATH or postgresql://USER@HOST/DB$"),
    ("sqlite://", r"^'sqlite://' names no file: give sqlite:///PATH \(an absolute path\)$"),
    ("  ", r"^the database URL is empty: give sqlite:///PATH or postgresql://HOST/DB$"),
])
def test_a_url_no_backend_serves_is_refused(url: str, message: str) -> None:
    with pytest.raises(UnknownDatabaseUrl, match=message):
        parse_database_url(url)


async def test_a_missing_postgresql_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "POSTGRESQL_MODULE", "coordinator.store.no_such_backend")
    with pytest.raises(UnknownDatabaseUrl, match=r"^the PostgreSQL store is not available in this installation "):
        async with open_store("postgresql://u@localhost/t"):
            pass


def test_config_store_url_and_its_precedence(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\nurl = "sqlite://{tmp_path}/from-config.db"\n')
    assert load_settings(tmp_path, None).database.path == tmp_path / "coordinator.sqlite3"
    assert load_settings(tmp_path, config).database.path == tmp_path / "from-config.db"
    flag = load_settings(tmp_path, config, database_url=f"{tmp_path}/from-flag.db")
    assert flag.database.path == tmp_path / "from-flag.db"
    config.write_text('[store]\nurl = "redis://x"\n')
    with pytest.raises(ConfigError, match=r"c\.toml: store\.url: unknown database URL scheme 'redis'"):
        load_settings(tmp_path, config)


def test_config_store_pool_size_and_statement_timeout(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    defaults = load_settings(tmp_path, None)
    assert (defaults.store_pool_size, defaults.store_statement_timeout_seconds) == (factory.DEFAULT_POOL_SIZE, 0.0)
    config.write_text("[store]\npool_size = 4\nstatement_timeout_seconds = 2.5\n")
    chosen = load_settings(tmp_path, config)
    assert (chosen.store_pool_size, chosen.store_statement_timeout_seconds) == (4, 2.5)
    config.write_text("[store]\npool_size = 0\nstatement_timeout_seconds = -1\n")
    with pytest.raises(ConfigError, match=r"store\.pool_size: .*greater than or equal to 1.*"
                                          r"store\.statement_timeout_seconds: .*greater than or equal to 0"):
        load_settings(tmp_path, config)


def test_config_store_pool_timeout(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    assert load_settings(tmp_path, None).store_pool_timeout_seconds == factory.DEFAULT_POOL_TIMEOUT_SECONDS == 10
    config.write_text("[store]\npool_timeout_seconds = 0.5\n")
    assert load_settings(tmp_path, config).store_pool_timeout_seconds == 0.5
    config.write_text("[store]\npool_timeout_seconds = 0\n")
    with pytest.raises(ConfigError, match=r"store\.pool_timeout_seconds: .*greater than 0"):
        load_settings(tmp_path, config)


async def test_open_store_applies_the_pool_timeout(postgres_url: str) -> None:
    async with open_store(postgres_url, pool_timeout_seconds=0.5) as store:
        assert store._pool.timeout == 0.5  # type: ignore[attr-defined]
    async with open_store(postgres_url) as store:
        assert store._pool.timeout == factory.DEFAULT_POOL_TIMEOUT_SECONDS  # type: ignore[attr-defined]


async def test_open_store_applies_the_pool_size_and_statement_timeout(postgres_url: str) -> None:
    async with open_store(postgres_url, pool_size=3, statement_timeout_seconds=1.5) as store:
        assert store._pool.max_size == 3  # type: ignore[attr-defined]
        rows = await store._read("SELECT current_setting('statement_timeout')")  # type: ignore[attr-defined]
        assert rows[0][0] == "1500ms"


def test_init_takes_the_database_from_the_environment(tmp_path: Path) -> None:
    database = tmp_path / "elsewhere" / "store.db"
    database.parent.mkdir()
    result = _coordinator("init", "--data-dir", str(tmp_path / "data"), "--json",
                          env={factory.ENV_VAR: f"sqlite://{database}"})
    assert result.returncode == 0, result.stderr
    assert database.is_file()
    assert not (tmp_path / "data" / "coordinator.sqlite3").exists()
    # The flag wins over the environment: a fresh store, initialised again.
    flagged = tmp_path / "flag.db"
    result = _coordinator("admin", "mint-token", "--data-dir", str(tmp_path / "data"), "--database", str(database),
                          env={factory.ENV_VAR: f"sqlite://{flagged}"})
    assert result.returncode == 0, result.stderr
    assert not flagged.exists()


@pytest.mark.parametrize("command", [["init"], ["serve"], ["admin", "mint-token"], ["admin", "registration-token"]])
def test_an_unknown_scheme_is_a_usage_error(tmp_path: Path, command: list[str]) -> None:
    result = _coordinator(*command, "--data-dir", str(tmp_path / "d"), "--database", "mysql://root:hunter2@db/t")
    assert result.returncode == 2
    assert "Invalid value for '--database': unknown database URL scheme 'mysql'" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d" / "coordinator.sqlite3").exists()
