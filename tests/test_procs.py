"""The test harness itself: processes it starts do not inherit the signals pytest ignores."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests.procs import python_module

IGNORED_IN_BACKGROUND = (signal.SIGINT, signal.SIGQUIT)


@pytest.fixture
def ignoring_like_a_background_job() -> Iterator[None]:
    """This process ignores SIGINT and SIGQUIT, as `pytest &` from a shell script does."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in IGNORED_IN_BACKGROUND}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


@pytest.mark.usefixtures("ignoring_like_a_background_job")
def test_children_start_with_default_signal_dispositions() -> None:
    # Without the reset, a plain child inherits both ignored signals: the harness is what differs.
    plain = subprocess.run(["python3", "-c", "from pathlib import Path; print(Path('/proc/self/status').read_text())"],
                           capture_output=True, text=True, check=True, timeout=60).stdout
    sig_ign = int(next(line for line in plain.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    assert sig_ign & _bit(signal.SIGINT) and sig_ign & _bit(signal.SIGQUIT)

    probed = subprocess.run(python_module("tests.signal_probe"), capture_output=True, text=True, check=True,
                            timeout=60).stdout.split()
    ignored, python_handles_sigint = int(probed[0]), probed[1] == "True"
    assert not ignored & (_bit(signal.SIGINT) | _bit(signal.SIGQUIT) | _bit(signal.SIGTERM))
    assert python_handles_sigint
