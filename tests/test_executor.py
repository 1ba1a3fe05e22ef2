"""The executor with real subprocesses: exit codes, output order, timeout, cancel, no leftovers."""

from __future__ import annotations

from pathlib import Path

import psutil
import trio

from agentd.executor import ExecSpec, execute
from common.states import JobState


def _spec(tmp_path: Path, command: str, timeout: float = 30, grace: float = 1.0) -> ExecSpec:
    return ExecSpec(job_id="job_x", command=command, env={"GREETING": "hi"}, timeout_seconds=timeout,
                    workdir=tmp_path / "work", grace_seconds=grace)


async def test_exit_code_output_and_clean_environment(tmp_path: Path) -> None:
    output = bytearray()
    outcome = await execute(_spec(tmp_path, 'echo "$GREETING"; echo "$HOME"; env | wc -l; exit 4'),
                            output.extend, trio.Event())
    assert outcome.state == JobState.FAILED and outcome.exit_code == 4
    lines = output.decode().splitlines()
    assert lines[0] == "hi"
    assert lines[1] == str(tmp_path / "work")
    assert int(lines[2]) <= 6  # PATH, HOME, TANVRIT_JOB_ID, GREETING, PWD, SHLVL at most
    assert not (tmp_path / "work").exists()


async def test_timeout_kills_a_job_that_ignores_term(tmp_path: Path) -> None:
    output = bytearray()
    with trio.fail_after(20):
        outcome = await execute(
            _spec(tmp_path, "trap '' TERM; sleep 60 & sleep 60 & echo started; wait", timeout=0.5, grace=0.3),
            output.extend, trio.Event())
    assert outcome.state == JobState.TIMED_OUT
    assert output == b"started\n"
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "60"]]
    assert leftovers == []


async def test_cancel_stops_the_job(tmp_path: Path) -> None:
    cancel = trio.Event()

    def on_output(chunk: bytes) -> None:
        if b"ready" in chunk:
            cancel.set()

    with trio.fail_after(20):
        outcome = await execute(_spec(tmp_path, "echo ready; sleep 60"), on_output, cancel)
    assert outcome.state == JobState.CANCELLED


async def test_unstartable_workdir_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    spec = ExecSpec(job_id="j", command="true", env={}, timeout_seconds=5, workdir=tmp_path / "file" / "x")
    try:
        outcome = await execute(spec, lambda _: None, trio.Event())
    except OSError:
        raise AssertionError("execute must report a failed start, not raise") from None
    assert outcome.state == JobState.FAILED
