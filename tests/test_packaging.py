"""The operator's path, as the README's "Running on several hosts" gives it, with the installed
wheel: ``tanvrit-coordinator init`` and ``serve``, ``tanvrit-agentd run``, ``tanvrit-compute auth
login`` and ``jobs run``, every program the console script from a fresh venv outside the checkout."""

from __future__ import annotations

import json
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from tests.installed import REPO, Installed
from tests.procs import ready_coordinator_url, stop_process, wait_for

# Both databases' migrations, as paths under the migrations folder (postgresql/ holds its own).
_MIGRATION_ROOT = REPO / "coordinator" / "store" / "migrations"
MIGRATIONS = sorted(str(p.relative_to(_MIGRATION_ROOT)) for p in _MIGRATION_ROOT.rglob("*.sql"))
CONSOLE_FILES = sorted(str(p.relative_to(REPO)) for folder in ("templates", "static")
                       for p in (REPO / "coordinator" / "console" / folder).iterdir())


def test_the_wheel_and_the_sdist_hold_every_migration_once(installed: Installed) -> None:
    (wheel,) = installed.dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    prefix = "coordinator/store/migrations/"
    shipped = sorted(n.removeprefix(prefix) for n in names if n.startswith(prefix) and n.endswith(".sql"))
    assert shipped == MIGRATIONS and len(names) == len(set(names))
    (sdist,) = installed.dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    in_sdist = sorted(n.split(prefix, 1)[1] for n in members if prefix in n and n.endswith(".sql"))
    assert in_sdist == MIGRATIONS
    # What an operator installs from beside the code: the units and the operations guide.
    for shipped in ("systemd/tanvrit-coordinator.service", "systemd/tanvrit-agentd.service", "docs/operations.md"):
        assert any(name.endswith("/" + shipped) for name in members), shipped


def test_the_wheel_holds_the_web_console(installed: Installed) -> None:
    (wheel,) = installed.dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in names if n.startswith(("coordinator/console/templates/", "coordinator/console/static/"))
                  ) == CONSOLE_FILES


def test_the_installed_programs_come_from_the_venv_not_the_checkout(installed: Installed, tmp_path: Path) -> None:
    code = "import coordinator, cli; print(coordinator.__file__)"
    probe = subprocess.run([str(installed.bin / "python"), "-c", code],
                           capture_output=True, text=True, cwd=tmp_path, env=installed.env(), timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).is_relative_to(installed.venv)


@contextmanager
def _daemon(args: list[str], log: Path, env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        yield process
    finally:
        stop_process(process, 15, 30.0)


def _ready(url_file: Path, process: subprocess.Popen[bytes], log: Path) -> str | None:
    if process.poll() is not None:
        raise AssertionError(f"serve exited with {process.returncode}: {log.read_text()[-3000:]}")
    return ready_coordinator_url(url_file)


def test_the_readme_multi_host_sequence_runs_a_job(installed: Installed, tmp_path: Path) -> None:
    env = installed.env(XDG_CONFIG_HOME=str(tmp_path / "config"), HOME=str(tmp_path / "home"))
    coordinator_dir, agent_dir = tmp_path / "coordinator", tmp_path / "agent"

    init = subprocess.run([installed.program("tanvrit-coordinator"), "init", "--data-dir", str(coordinator_dir),
                           "--json"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert init.returncode == 0, init.stderr
    secrets = json.loads(init.stdout)
    with ExitStack() as stack:
        serve_log = tmp_path / "serve.log"
        server = stack.enter_context(_daemon(
            [installed.program("tanvrit-coordinator"), "serve", "--bind", "127.0.0.1:0", "--data-dir",
             str(coordinator_dir)], serve_log, env, tmp_path))
        url = wait_for(lambda: _ready(coordinator_dir / "coordinator.url", server, serve_log),
                       message="the installed coordinator to serve")
        # The installed coordinator serves the console, templates and script included.
        assert httpx.get(f"{url}/ui/sign-in", timeout=30).status_code == 200
        assert "EventSource" in httpx.get(f"{url}/ui/static/console.js", timeout=30).text
        stack.enter_context(_daemon(
            [installed.program("tanvrit-agentd"), "run", "--coordinator", url, "--registration-token",
             secrets["registrationToken"], "--data-dir", str(agent_dir), "--label", "zone=a"],
            tmp_path / "agent.log", env, tmp_path))

        login = subprocess.run([installed.program("tanvrit-compute"), "auth", "login", "--url", url, "--token",
                                secrets["ownerToken"]], capture_output=True, text=True, env=env, cwd=tmp_path,
                               timeout=120)
        assert login.returncode == 0, login.stderr
        job = subprocess.run([installed.program("tanvrit-compute"), "jobs", "run", "--label", "zone=a", "--",
                              "sh", "-c", "echo hello from the wheel; exit 3"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
        assert (job.returncode, job.stdout) == (3, "hello from the wheel\n"), (job.stderr,
                                                                             (tmp_path / "agent.log").read_text())
        assert "FAILED (exit code 3" in job.stderr


def test_every_program_takes_h_and_help_alike(installed: Installed, tmp_path: Path) -> None:
    for program, sub in (("tanvrit-coordinator", "serve"), ("tanvrit-agentd", "run"), ("tanvrit-compute", "jobs")):
        for args in ([], [sub]):
            short, long = (subprocess.run([installed.program(program), *args, flag], capture_output=True, text=True,
                                          env=installed.env(), cwd=tmp_path, timeout=60) for flag in ("-h", "--help"))
            assert short.returncode == long.returncode == 0, (program, args, short.stderr)
            assert short.stdout == long.stdout
            assert short.stdout.startswith(f"Usage: {program} {' '.join(args)}".rstrip())


def test_make_up_installs_the_runtime_and_make_test_the_test_tools() -> None:
    def plan(target: str) -> str:
        # -B: as on a fresh clone, whatever is installed here already.
        return subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, timeout=60,
                              check=True).stdout

    up = plan("up")
    assert "pip install --quiet --disable-pip-version-check -e .\n" in up and "[test]" not in up
    assert "-e '.[test]'" in plan("test")
