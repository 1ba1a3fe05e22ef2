"""What a person at a terminal sees and does with ``jobs run``: the QUEUED → RUNNING line while
waiting, and Ctrl-C asking whether to cancel; and what happens without a terminal (SIGINT and
SIGTERM cancel the job)."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli_harness import PtyProcess, cli_command, cli_env
from tests.procs import AgentProc, Coordinator, wait_for


@pytest.fixture(scope="module")
def coord(quick_heartbeat_coordinator: Coordinator) -> Coordinator:
    return quick_heartbeat_coordinator


@pytest.fixture
def terminal() -> Iterator[list[PtyProcess]]:
    opened: list[PtyProcess] = []
    yield opened
    for proc in opened:
        proc.close()


def _job(coord: Coordinator, job_id: str) -> dict[str, Any]:
    with coord.client() as http:
        job: dict[str, Any] = http.get(f"/v0/jobs/{job_id}").json()
    return job


def _job_id_from(text: str) -> str:
    return next(word.rstrip(":?") for word in text.split() if word.startswith("job_"))


def test_terminal_shows_queued_then_running(coord: Coordinator, tmp_path: Path,
                                            terminal: list[PtyProcess]) -> None:
    env = {**cli_env(tmp_path, coord), "NO_COLOR": ""}
    run = PtyProcess(cli_command("jobs", "run", "--label", "zone=late", "--", "sleep 2; echo finished"), env)
    terminal.append(run)
    # Why it waits, from the moment it is queued: no agent has its labels.
    run.expect("QUEUED · no_matching_agent: no agent matches labels zone=late")
    agent = AgentProc(coord, tmp_path / "late-agent", labels=("zone=late",)).start()
    try:
        # The poll may also catch the short ASSIGNED step between the claim and the start.
        run.expect("RUNNING on agt_")
        assert re.search(r"QUEUED → (ASSIGNED → )?RUNNING on agt_", run.text)
        assert run.wait() == 0
    finally:
        agent.stop()
    text = run.text
    assert text.index("RUNNING on agt_") < text.index("finished")
    assert "SUCCEEDED" in text and "\x1b[32m" in text  # the final state, coloured on a terminal


@pytest.mark.parametrize(("answer", "state", "message"), [
    ("y", "CANCELLED", "CANCELLED"),
    ("n", "QUEUED", "keeps running"),
])
def test_ctrl_c_at_a_terminal_asks(coord: Coordinator, tmp_path: Path, terminal: list[PtyProcess],
                                   answer: str, state: str, message: str) -> None:
    run = PtyProcess(cli_command("jobs", "run", "--label", "zone=nowhere", "--", "true"), cli_env(tmp_path, coord))
    terminal.append(run)
    run.expect("no_matching_agent")
    job_id = _job_id_from(run.text)
    run.process.send_signal(signal.SIGINT)
    run.expect(f"Cancel job {job_id}? [Y/n]")
    run.send(answer + "\n")
    assert run.wait() == 130
    assert message in run.text
    assert _job(coord, job_id)["state"] == state
    if state == "QUEUED":
        assert f"jobs logs -f {job_id}" in run.text
        with coord.client() as http:
            http.post(f"/v0/jobs/{job_id}:cancel")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_without_a_terminal_an_interrupt_cancels_the_running_job(coord: Coordinator, tmp_path: Path,
                                                                 sig: signal.Signals) -> None:
    agent = AgentProc(coord, tmp_path / "agent", labels=(f"zone=batch-{sig.name}",)).start()
    err = tmp_path / "stderr.txt"
    try:
        with err.open("w") as handle:
            process = subprocess.Popen(
                cli_command("jobs", "run", "--label", f"zone=batch-{sig.name}", "--", "echo started; sleep 120"),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=handle, env=cli_env(tmp_path, coord))
        assert process.stdout is not None
        output = bytearray()
        # Read stdout as it comes, so the test can wait until the job's first line was printed.
        stream = process.stdout

        def read_all() -> None:
            while chunk := stream.read1(4096):
                output.extend(chunk)

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        try:
            wait_for(lambda: "queued" in err.read_text(), message="the job id on stderr")
            job_id = _job_id_from(err.read_text())
            wait_for(lambda: bytes(output) == b"started\n", message="the job's output printed")
            process.send_signal(sig)
            assert process.wait(timeout=60) == 130
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            reader.join(timeout=30)
            process.stdout.close()
    finally:
        agent.stop()
    assert bytes(output) == b"started\n"
    assert f"cancelling job {job_id}" in err.read_text()
    assert "Cancel job" not in err.read_text()  # nobody to ask
    assert _job(coord, job_id)["state"] == "CANCELLED"
