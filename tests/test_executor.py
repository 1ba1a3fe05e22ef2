"""The executor with real subprocesses: exit codes, output order, timeout, cancel, no leftovers."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import trio

from agentd import executor
from agentd.executor import ExecSpec, execute, job_environment
from agentd.fingerprint.gpu import GpuUnit
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


async def test_with_leave_dirs_the_caller_removes_them_after_the_outcome(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "echo kept > file")
    outcome = await execute(spec, lambda _: None, trio.Event(), leave_dirs=True)
    assert outcome.state == JobState.SUCCEEDED
    # The agent reports the outcome first; the disk work comes after.
    assert (spec.workdir / "file").read_text() == "kept\n" and (spec.job_state_dir / "status").exists()
    await executor.remove_job_dirs(spec)
    assert not spec.workdir.exists() and not spec.job_state_dir.exists()


async def test_timeout_kills_a_job_that_ignores_term(tmp_path: Path) -> None:
    output = bytearray()
    # Its own duration, so that other tests' `sleep 60` on a shared machine are not taken for ours.
    seconds = f"60.{uuid.uuid4().int % 10**6:06d}"
    with trio.fail_after(20):
        outcome = await execute(
            _spec(tmp_path, f"trap '' TERM; sleep {seconds} & sleep {seconds} & echo started; wait", timeout=3,
                  grace=0.3),
            output.extend, trio.Event())
    assert outcome.state == JobState.TIMED_OUT
    # TERM was not enough: the job was KILLed after its grace, and says so.
    assert (outcome.signal, outcome.exit_code) == ("KILL", 137)
    assert output == b"started\n"
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", seconds]]
    assert leftovers == []


async def test_cancel_stops_the_job(tmp_path: Path) -> None:
    cancel = trio.Event()

    def on_output(chunk: bytes) -> None:
        if b"ready" in chunk:
            cancel.set()

    with trio.fail_after(20):
        outcome = await execute(_spec(tmp_path, "echo ready; sleep 60"), on_output, cancel)
    assert outcome.state == JobState.CANCELLED
    # The default TERM disposition killed it within the grace: 128 + 15, as a shell says.
    assert (outcome.signal, outcome.exit_code) == ("TERM", 143)


def _cancel_on(marker: bytes, output: bytearray, cancel: trio.Event) -> Callable[[bytes], None]:
    def on_output(chunk: bytes) -> None:
        output.extend(chunk)
        if marker in output:
            cancel.set()
    return on_output


async def test_a_term_handler_gets_its_grace_to_clean_up(tmp_path: Path) -> None:
    # The handler takes 1.5 s (grace 10 s). Before, the wrapper died on TERM and the executor
    # KILLed everything at once: "cleaned" never came. The cancel waits for the child to say it
    # runs (after its own exec, with default dispositions): a child still between fork and exec
    # when the TERMs arrive may run the parent's trap instead of dying, and outlive the grace
    # (seen once in CI as ('KILL', 3)). The handler also stops the child itself.
    command = ("trap 'echo cleaning; kill $! 2>/dev/null; sleep 1.5; echo cleaned; exit 3' TERM; "
               "sh -c 'echo ready; exec sleep 60' & wait")
    cancel, output = trio.Event(), bytearray()
    with trio.fail_after(30):
        outcome = await execute(_spec(tmp_path, command, grace=10), _cancel_on(b"ready", output, cancel), cancel)
    assert output.decode().splitlines() == ["ready", "cleaning", "cleaned"]
    assert outcome.state == JobState.CANCELLED
    assert (outcome.signal, outcome.exit_code) == ("TERM", 3)
    # The grace ended when the job did, not when it ran out.
    assert 1500 <= outcome.runtime_ms < 9000


async def test_a_child_still_cleaning_up_when_the_shell_exits_keeps_the_grace(tmp_path: Path) -> None:
    # The job's shell dies of TERM at once; its child's handler needs a second more: the
    # agent goes on supervising (output included) until the group is empty.
    command = ("python3 -u -c 'import signal, sys, time\n"
               "def bye(*_):\n    time.sleep(1); print(\"child cleaned\"); sys.exit(0)\n"
               "signal.signal(signal.SIGTERM, bye); print(\"ready\"); time.sleep(60)' & wait")
    cancel, output = trio.Event(), bytearray()
    with trio.fail_after(30):
        outcome = await execute(_spec(tmp_path, command, grace=10), _cancel_on(b"ready", output, cancel), cancel)
    assert b"child cleaned" in output
    assert outcome.state == JobState.CANCELLED and outcome.signal == "TERM"


async def test_a_job_killed_by_its_own_signal_says_which(tmp_path: Path) -> None:
    outcome = await execute(_spec(tmp_path, "kill -SEGV $$"), lambda _: None, trio.Event())
    assert outcome.state == JobState.FAILED
    assert (outcome.signal, outcome.exit_code, outcome.reason) == ("SEGV", 139, "killed_by_signal_11")


async def test_the_agent_sets_reserved_variables_last(tmp_path: Path) -> None:
    unit = GpuUnit(uuid="GPU-3", model="m", minor=3, memory_mb=1, index=3)
    spec = ExecSpec(job_id="job_x", command="true", env={"TANVRIT_JOB_ID": "job_other", "CUDA_VISIBLE_DEVICES": "0,1",
                                                         "NVIDIA_VISIBLE_DEVICES": "all", "OK": "1"},
                    timeout_seconds=5, workdir=tmp_path / "w", gpus=(unit,))
    env = job_environment(spec)
    assert (env["TANVRIT_JOB_ID"], env["CUDA_VISIBLE_DEVICES"], env["NVIDIA_VISIBLE_DEVICES"], env["OK"]) == (
        "job_x", "GPU-3", "GPU-3", "1")
    assert "CUDA_VISIBLE_DEVICES" not in job_environment(ExecSpec(
        job_id="j", command="true", env={"CUDA_VISIBLE_DEVICES": "0"}, timeout_seconds=5, workdir=tmp_path / "v"))


async def test_unstartable_workdir_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    spec = ExecSpec(job_id="j", command="true", env={}, timeout_seconds=5, workdir=tmp_path / "file" / "x")
    try:
        outcome = await execute(spec, lambda _: None, trio.Event())
    except OSError:
        raise AssertionError("execute must report a failed start, not raise") from None
    assert outcome.state == JobState.FAILED


def test_an_array_tasks_variables_from_the_coordinator_reach_the_job(tmp_path: Path) -> None:
    spec = ExecSpec(job_id="job_x", command="true", timeout_seconds=5, workdir=tmp_path / "w",
                    env={"TANVRIT_ARRAY_INDEX": "7", "TANVRIT_ARRAY_COUNT": "10", "TANVRIT_ARRAY_ID": "arr_1",
                         "TANVRIT_OTHER": "dropped"})
    env = job_environment(spec)
    assert (env["TANVRIT_ARRAY_INDEX"], env["TANVRIT_ARRAY_COUNT"], env["TANVRIT_ARRAY_ID"]) == ("7", "10", "arr_1")
    assert "TANVRIT_OTHER" not in env


def _bit(signum: int) -> int:
    return 1 << (signum - 1)


async def test_the_job_is_spawned_on_the_loop_with_default_signal_dispositions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The spawn does not go through trio's worker-thread Popen (its hand-back to the loop was most
    # of the agent's claim-to-spawn time).
    def no_thread_spawn(*args: object, **kwargs: object) -> None:
        raise AssertionError("the job must be spawned on the loop")

    monkeypatch.setattr(executor.trio.lowlevel, "open_process", no_thread_spawn)
    # The agent (Python) ignores SIGPIPE and this test ignores SIGXFSZ too: the job must not.
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        output = bytearray()
        outcome = await execute(_spec(tmp_path, "grep -E '^Sig(Ign|Blk):' /proc/self/status; exit 3"),
                                output.extend, trio.Event())
    finally:
        signal.signal(signal.SIGXFSZ, previous)
    assert (outcome.state, outcome.exit_code) == (JobState.FAILED, 3)
    fields = dict(line.split(":") for line in output.decode().splitlines())
    ignored, blocked = int(fields["SigIgn"], 16), int(fields["SigBlk"], 16)
    assert not ignored & (_bit(signal.SIGPIPE) | _bit(signal.SIGXFSZ)) and blocked == 0
    assert outcome.spawned is not None and outcome.exited is not None


async def test_without_a_pidfd_the_exit_is_awaited_in_a_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")  # a kernel before 5.3

    monkeypatch.setattr(executor.os, "pidfd_open", no_pidfd)
    outcome = await execute(_spec(tmp_path, "sleep 0.2; exit 5"), lambda _: None, trio.Event())
    assert (outcome.state, outcome.exit_code) == (JobState.FAILED, 5)
    cancel = trio.Event()
    cancel.set()  # stopped at once: TERM, and its exit by that signal seen through the thread's waitid
    stopped = await execute(_spec(tmp_path, "sleep 60", grace=1.0), lambda _: None, cancel)
    assert stopped.state == JobState.CANCELLED


async def test_the_final_meter_state_is_queued_with_the_result(tmp_path: Path) -> None:
    # The caller queues the result (spool events) as soon as execute returns: nothing may run
    # between the final on_meter and that, so the two go to disk in one commit, not two.
    ticks = 0
    at_meter: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        outcome = await execute(_spec(tmp_path, "echo some output"), lambda _: None, trio.Event(),
                                on_meter=lambda state: at_meter.append(ticks), leave_dirs=True)
        returned = ticks
        nursery.cancel_scope.cancel()
    assert outcome.state == JobState.SUCCEEDED
    assert at_meter and at_meter[-1] == returned
