"""The project as an operator gets it: an sdist and a wheel built from this checkout, the wheel
installed into a fresh virtual environment outside the checkout.

Dependencies come from a wheelhouse kept beside the test environment (``<sys.prefix>/tanvrit-
wheelhouse``), so a warm run installs without touching an index; a cold run fills it once with
``pip wheel`` through the machine's ordinary pip configuration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELHOUSE = Path(sys.prefix) / "tanvrit-wheelhouse"
PROGRAMS = ("tanvrit-coordinator", "tanvrit-agentd", "tanvrit-compute")


@dataclass(frozen=True)
class Installed:
    dist: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def program(self, name: str) -> str:
        return str(self.bin / name)

    def env(self, **extra: str) -> dict[str, str]:
        """An environment that finds the installed programs first and nothing of the checkout."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        return {**env, **extra}


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)


def build_dist(out: Path) -> tuple[Path, Path]:
    """Build the sdist, then the wheel from that sdist (so a file missing from the sdist shows)."""
    result = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = out.glob("tanvrit_compute-*.tar.gz")
    (wheel,) = out.glob("tanvrit_compute-*.whl")
    return sdist, wheel


def _pip_into(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The test environment's pip installs into the new venv (`--python`): no ensurepip per run.
    return _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "--disable-pip-version-check",
                 *args])


def install_wheel(wheel: Path, venv: Path) -> None:
    """A fresh venv with the wheel and its dependencies; offline from the wheelhouse when it can."""
    result = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert result.returncode == 0, result.stderr
    offline = ("install", "--no-index", "--find-links", str(WHEELHOUSE), str(wheel))
    if WHEELHOUSE.is_dir() and _pip_into(venv, *offline).returncode == 0:
        return
    filled = _run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--quiet",
                   "--wheel-dir", str(WHEELHOUSE), str(wheel)])
    assert filled.returncode == 0, filled.stderr[-3000:]
    for own in WHEELHOUSE.glob("tanvrit_compute-*"):
        own.unlink()  # only dependencies live there; the wheel under test is always the fresh one
    result = _pip_into(venv, *offline)
    assert result.returncode == 0, result.stderr[-3000:]


def build_and_install(root: Path) -> Installed:
    dist = root / "dist"
    _, wheel = build_dist(dist)
    venv = root / "venv"
    install_wheel(wheel, venv)
    for name in PROGRAMS:
        assert (venv / "bin" / name).is_file(), f"the wheel installs no {name} script"
    return Installed(dist, venv)


def remove(installed: Installed) -> None:
    shutil.rmtree(installed.venv, ignore_errors=True)
    shutil.rmtree(installed.dist, ignore_errors=True)
