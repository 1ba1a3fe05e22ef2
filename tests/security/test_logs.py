"""Logs never carry local variables or request bodies, whichever renderer is chosen."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROGRAM = """
import logging
from common.logs import configure_logging
configure_logging(json_lines={json_lines})

def handler():
    body = b"SECRET-BODY-" + b"[" * 50
    raise RuntimeError("boom")

try:
    handler()
except RuntimeError:
    logging.getLogger("tanvrit.coordinator").exception("unhandled error in POST /v0/jobs")
"""


@pytest.mark.parametrize("json_lines", [False, True])
def test_an_exception_log_shows_the_traceback_but_no_local_variables(json_lines: bool) -> None:
    done = subprocess.run([sys.executable, "-c", _PROGRAM.format(json_lines=json_lines)], capture_output=True,
                          text=True, timeout=60, check=True)
    assert "RuntimeError: boom" in done.stderr
    assert "unhandled error in POST /v0/jobs" in done.stderr
    assert "SECRET-BODY" not in done.stderr
