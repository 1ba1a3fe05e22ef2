# The two README commands: `make up` (local control plane + demo job; UP_ARGS="--agents 2" passes
# options to `local up`) and `make test`. `up` installs the runtime only; `test` adds the test tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed
# The console's browser tests drive the distribution's Chromium (not Playwright's download).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: up test lint typecheck unit systemd-analyze postgresql-server haproxy clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $(RUNTIME_STAMP)

# The test install includes the runtime, so it stamps both.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP) $(RUNTIME_STAMP)

up: $(RUNTIME_STAMP)
	$(BIN)/tanvrit-compute local up --demo $(UP_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The unit tests check the systemd units with systemd-analyze: install it where it is a package away.
systemd-analyze:
	@command -v systemd-analyze >/dev/null || { command -v apt-get >/dev/null && $(SUDO) apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends systemd >/dev/null; } \
		|| echo "note: systemd-analyze is not installed: the unit checks will be skipped"

# The PostgreSQL store tests start their own throwaway server from the distribution's binaries
# (tests/postgres.py): install the server package where /usr/lib/postgresql/*/bin/initdb is missing.
postgresql-server:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { command -v apt-get >/dev/null && $(SUDO) apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } \
		|| echo "note: the PostgreSQL server is not installed: the PostgreSQL store tests will be skipped"

# The load-balancer test starts the distribution's HAProxy with docs/deployment/haproxy.cfg.
haproxy:
	@command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || { command -v apt-get >/dev/null \
		&& $(SUDO) apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends haproxy >/dev/null; } \
		|| echo "note: haproxy is not installed: the load-balancer test will be skipped"

$(CHROMIUM):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium

browser: $(CHROMIUM)

# Worker processes for the suite (pytest-xdist). A test file runs whole on one worker (loadfile),
# so a module's shared fixtures start once; each worker has its own PostgreSQL server and temp dirs.
TEST_WORKERS ?= 2

unit: $(STAMP) browser systemd-analyze postgresql-server haproxy
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
