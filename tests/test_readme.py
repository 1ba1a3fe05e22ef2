"""Every command in the README's ``sh`` blocks, run in order with the installed programs, so a
README that drifts from them fails CI (the convention is described in its Development section).

How a README line becomes something run here:

- ``make up`` runs what it runs, ``tanvrit-compute local up --demo`` (on a free port), in the
  background; ``tanvrit-coordinator serve`` and ``tanvrit-agentd run`` too. Each is waited on
  until it is ready and stopped at the end.
- The multi-host names and paths are mapped to this machine (``MAPPED``): ``coordinator:8470``
  is the coordinator ``serve`` started, ``staging:8470`` the local control plane, ``/var/lib/...``
  temporary directories, the webhook receiver a loopback URL (the local plane allows those).
- ``xx_...`` is the last id or secret with that prefix that an earlier command printed (the CLI
  examples' ``ws_...`` starts as the local control plane's workspace, and ``pat.txt`` holds its
  token, as a reader who ran ``make up`` would have them).
- A trailing ``# prints X, exits N`` is checked; any other command must exit 0.
- ``NOT_RUN`` lines are checked to exist only: they are this suite, or what test_packaging does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.installed import REPO, Installed
from tests.procs import ready_coordinator_url, wait_for

README = REPO / "README.md"
NOT_RUN = {
    "make test": "the suite this test belongs to",
    "pip install .": "tests/test_packaging.py builds and installs the wheel these commands run with",
}
_PLACEHOLDER = re.compile(r"(?<![A-Za-z0-9_-])((?:tcp_)?[a-z]+_)\.\.\.")
_EXPECT = re.compile(r"#.*?\bprints (?P<prints>[^,]+?)(?:,|$).*?\bexits (?P<exits>\d+)")


def readme_commands(text: str) -> list[str]:
    """The command lines of the ``sh`` blocks, continuation lines joined, in order."""
    commands: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip():
                commands.append(line.strip())
    return commands


def _bare(command: str) -> str:
    """The command without its trailing comment, in canonical shell quoting."""
    return shlex.join(shlex.split(command, comments=True))


@dataclass
class Session:
    """One reader's terminal: a working directory, an environment, what earlier commands printed."""

    installed: Installed
    root: Path
    bound: dict[str, str] = field(default_factory=dict)
    mapped: dict[str, str] = field(default_factory=dict)
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def work(self) -> Path:
        return self.root / "work"

    def env(self) -> dict[str, str]:
        return self.installed.env(HOME=str(self.root / "home"), XDG_CONFIG_HOME=str(self.root / "config"),
                                  TANVRIT_COMPUTE_HOME=str(self.root / "data"))

    def substitute(self, command: str) -> str:
        for literal, value in self.mapped.items():
            command = command.replace(literal, value)

        def value_of(match: re.Match[str]) -> str:
            prefix = match.group(1)
            assert prefix in self.bound, f"nothing printed a {prefix}... before `{command}`"
            return self.bound[prefix]

        return _PLACEHOLDER.sub(value_of, command)

    def learn(self, output: str, placeholders: set[str]) -> None:
        for prefix in placeholders:
            found = re.findall(rf"(?<![A-Za-z0-9_-]){re.escape(prefix)}[A-Za-z0-9_-]{{16,}}", output)
            if found:
                self.bound[prefix] = found[-1]

    def daemon(self, command: str, ready: Callable[[Path], object]) -> None:
        log = self.root / f"daemon-{len(self.daemons)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, shell=True, stdout=out, stderr=subprocess.STDOUT, cwd=self.work,
                                       env=self.env(), start_new_session=True)
        self.daemons.append(process)

        def check() -> object:
            if process.poll() is not None:
                raise AssertionError(f"`{command}` exited with {process.returncode}: {log.read_text()[-3000:]}")
            return ready(log)

        wait_for(check, timeout=120, message=f"`{command}` to be ready")

    def stop(self) -> None:
        """Stop every daemon's whole process group: the shell that ran the command may have
        exited and left the daemon itself behind (as it did, before this, after every run)."""
        for process in reversed(self.daemons):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.daemons:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
            try:
                wait_for(lambda group=process.pid: not _group_alive(group), timeout=60,
                         message=f"daemon group {process.pid} to stop")
            except AssertionError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            if process.poll() is None:
                process.kill()
                process.wait()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _coordinator_ready(data_dir: Path) -> Callable[[Path], str | None]:
    return lambda _log: ready_coordinator_url(data_dir / "coordinator.url")


@pytest.fixture
def session(installed: Installed, tmp_path: Path) -> Iterator[Session]:
    reader = Session(installed, tmp_path)
    reader.work.mkdir()
    (reader.work / ".venv").symlink_to(installed.venv)  # the Quickstart's .venv/bin/... programs
    for name in ("home", "config", "data"):
        (tmp_path / name).mkdir()
    try:
        yield reader
    finally:
        reader.stop()


def test_every_readme_command_runs_as_written(session: Session) -> None:
    commands = readme_commands(README.read_text())
    placeholders = {match.group(1) for command in commands for match in _PLACEHOLDER.finditer(command)}
    coordinator_dir = session.root / "coordinator"
    session.mapped.update({
        "/var/lib/tanvrit-coordinator": str(coordinator_dir),
        "/var/lib/tanvrit-agentd": str(session.root / "agentd"),
        "0.0.0.0:8470": "127.0.0.1:0",
        "https://example.com/hook": "http://127.0.0.1:9/hook",
    })
    ran: list[str] = []
    local_workspace: str | None = None  # known once `make up` has run
    for command in commands:
        bare = _bare(command)
        if bare in NOT_RUN:
            ran.append(f"not run: {bare} ({NOT_RUN[bare]})")
            continue
        line = session.substitute(command)
        if bare == "make up":
            session.daemon("tanvrit-compute local up --demo --port 0",
                           lambda log: "Press Ctrl-C" in log.read_text())
            credentials = json.loads((session.root / "data" / "local" / "credentials.json").read_text())
            state = json.loads((session.root / "data" / "local" / "state.json").read_text())
            session.mapped["https://staging:8470"] = state["url"]
            (session.work / "pat.txt").write_text(credentials["ownerToken"] + "\n")
            local_workspace = credentials["workspaceId"]
        elif bare.startswith("tanvrit-coordinator serve "):
            session.daemon(line, _coordinator_ready(coordinator_dir))
            url = _coordinator_ready(coordinator_dir)(coordinator_dir)
            assert url
            session.mapped.update({"https://coordinator:8470": url, "http://coordinator:8470": url})
        elif bare.startswith("tanvrit-agentd run "):
            session.daemon(line, lambda log: (session.root / "agentd" / "agent.json").exists())
        else:
            if bare.startswith("tanvrit-compute --profile staging auth login"):
                assert local_workspace, "the profiles block needs the local control plane of `make up`"
                session.bound["ws_"] = local_workspace  # the profiles block acts on the local plane
            result = subprocess.run(line, shell=True, capture_output=True, text=True, cwd=session.work,
                                    env=session.env(), timeout=180)
            expected = _EXPECT.search(command)
            want = int(expected.group("exits")) if expected else 0
            assert result.returncode == want, (command, line, result.stdout[-2000:], result.stderr[-2000:])
            if expected:
                assert expected.group("prints").strip() in result.stdout, (command, result.stdout)
            assert "Traceback" not in result.stderr
            session.learn(result.stdout + result.stderr, placeholders)
        ran.append(bare)
    # Nothing was skipped silently: the multi-host sequence and the CLI examples all ran.
    assert any(line.startswith("tanvrit-compute jobs run") for line in ran)
    assert any(line.startswith("tanvrit-compute webhooks deliveries") for line in ran)
    assert len([line for line in ran if line.startswith("not run")]) == len(NOT_RUN)


def test_readme_blocks_are_found() -> None:
    commands = [_bare(command) for command in readme_commands(README.read_text())]
    assert commands[:2] == ["make up", "make test"]
    assert "tanvrit-coordinator init --data-dir /var/lib/tanvrit-coordinator" in commands
    assert any(command.startswith("tanvrit-agentd run --coordinator http://coordinator:8470 --registration-token")
               for command in commands)
    assert set(NOT_RUN) <= set(commands)
    # `make test` is not run again from here, but it must be a target that make knows.
    plan = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0 and ".venv/bin/pytest" in plan.stdout, plan.stderr
