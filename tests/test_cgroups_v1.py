"""Jobs in real cgroup v1 groups (root on this machine): limits are enforced, nothing is left
behind, OOM kills are reported, a fork bomb is contained, and jobs run as the run_as user."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trio

from agentd.cgroups.base import Limits
from agentd.cgroups.v1 import V1Manager
from agentd.executor import ExecSpec, RunAs, execute
from common.states import JobState
from tests.cgroup_fixtures import real_v1_manager
from tests.procs import wait_for

pytestmark = pytest.mark.cgroups


@pytest.fixture
def v1() -> Iterator[V1Manager]:
    yield from real_v1_manager()


def _spec(tmp_path: Path, command: str, *, timeout: float = 60, grace: float = 1.0, **limits: object) -> ExecSpec:
    return ExecSpec(job_id=f"job_{os.urandom(4).hex()}", command=command, env={}, timeout_seconds=timeout,
                    workdir=tmp_path / "work", grace_seconds=grace, limits=Limits(**limits))  # type: ignore[arg-type]


async def _run(spec: ExecSpec, manager: V1Manager, cancel: trio.Event | None = None,
               output: bytearray | None = None) -> tuple[object, bytes]:
    out = output if output is not None else bytearray()
    with trio.fail_after(60):
        outcome = await execute(spec, out.extend, cancel or trio.Event(), cgroups=manager)
    return outcome, bytes(out)


async def test_the_job_runs_inside_its_cgroup_from_the_start(tmp_path: Path, v1: V1Manager) -> None:
    spec = _spec(tmp_path, "cat /proc/self/cgroup", memory_bytes=64 * 2**20, pids=32, cpus=1)
    _, output = await _run(spec, v1)
    lines = output.decode().splitlines()
    for controller in ("memory", "pids", "cpuacct"):
        [line] = [entry for entry in lines if entry.split(":")[1].split(",").__contains__(controller)]
        assert line.endswith(f"/{spec.job_id}"), line
    assert v1.open(spec.job_id) is None  # removed afterwards


async def test_memory_hog_is_reported_oom_killed(tmp_path: Path, v1: V1Manager) -> None:
    spec = _spec(tmp_path, "python3 -c 'b = bytearray(400 * 2**20); print(len(b))'", memory_bytes=64 * 2**20)
    outcome, _ = await _run(spec, v1)
    assert outcome.state == JobState.FAILED  # type: ignore[attr-defined]
    assert outcome.reason == "oom_killed"  # type: ignore[attr-defined]


async def test_a_job_within_its_memory_limit_succeeds(tmp_path: Path, v1: V1Manager) -> None:
    spec = _spec(tmp_path, "python3 -c 'b = bytearray(16 * 2**20)'", memory_bytes=128 * 2**20)
    outcome, _ = await _run(spec, v1)
    assert outcome.state == JobState.SUCCEEDED  # type: ignore[attr-defined]


async def test_fork_bomb_is_held_by_the_pids_limit(tmp_path: Path, v1: V1Manager) -> None:
    # Every process forks forever; failures (EAGAIN at the limit) are shrugged off and retried.
    bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n"
    spec = _spec(tmp_path, f"python3 -c '{bomb}'", timeout=3, grace=0.5, pids=24)
    most = 0

    async def count() -> None:
        nonlocal most
        while True:
            group = v1.open(spec.job_id)
            most = max(most, len(group.pids()) if group is not None else 0)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(count)
        outcome, _ = await _run(spec, v1)
        nursery.cancel_scope.cancel()
    # It forked up to the limit, never past it, the host answered, and nothing was left behind.
    assert 20 <= most <= 24, most
    assert outcome.state == JobState.TIMED_OUT  # type: ignore[attr-defined]
    assert v1.open(spec.job_id) is None


async def test_timeout_terms_the_whole_cgroup_then_kills_what_ignores_it(tmp_path: Path, v1: V1Manager) -> None:
    # Children in a new session escape the process group, not the cgroup.
    command = "trap '' TERM; setsid sh -c \"trap '' TERM; sleep 300\" & sleep 300 & echo started; wait"
    spec = _spec(tmp_path, command, timeout=1, grace=0.5, pids=16)
    seen: list[list[int]] = []
    output = bytearray()

    async def watch_group() -> None:
        while True:
            group = v1.open(spec.job_id)
            if group is not None and len(group.pids()) >= 3:
                seen.append(group.pids())
                return
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_group)
        outcome, _ = await _run(spec, v1, output=output)
    assert outcome.state == JobState.TIMED_OUT  # type: ignore[attr-defined]
    assert seen, "the job's processes were never all in its cgroup"
    assert all(not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE for pid in seen[0])
    assert v1.open(spec.job_id) is None


async def test_cancel_leaves_nothing_behind(tmp_path: Path, v1: V1Manager) -> None:
    cancel = trio.Event()
    output = bytearray()

    def on_output(chunk: bytes) -> None:
        output.extend(chunk)
        if b"\n" in output:
            cancel.set()

    # The escaped child's own pid, not a machine-wide search for "sleep 300": other tests
    # (another xdist worker) may have such a process alive at the same moment.
    spec = _spec(tmp_path, "setsid sleep 300 & echo ready $!; wait", pids=16)
    with trio.fail_after(60):
        outcome = await execute(spec, on_output, cancel, cgroups=v1)
    assert outcome.state == JobState.CANCELLED
    escaped = int(output.decode().split()[1])
    assert not psutil.pid_exists(escaped) or psutil.Process(escaped).status() == psutil.STATUS_ZOMBIE


async def test_cpu_quota_is_enforced(tmp_path: Path, v1: V1Manager) -> None:
    spec = _spec(tmp_path, "timeout 2 sh -c 'while :; do :; done'", cpus=0.2)
    outcome, _ = await _run(spec, v1)
    wall = outcome.runtime_ms / 1000  # type: ignore[attr-defined]
    cpu = outcome.usage.cpu_seconds  # type: ignore[attr-defined]
    assert cpu <= 0.2 * wall * 1.25 + 0.05, (cpu, wall)


async def test_denied_devices_cannot_be_opened(tmp_path: Path, v1: V1Manager) -> None:
    if "devices" not in v1.controllers:
        pytest.skip("no devices hierarchy mounted")
    # /dev/null (1:3) stands in for a GPU given to another job.
    spec = _spec(tmp_path, "echo x > /dev/null && echo opened || echo denied", denied_devices=((1, 3),))
    _, output = await _run(spec, v1)
    assert output.decode().strip().endswith("denied")


async def test_job_runs_as_the_unprivileged_user_with_its_own_workdir(v1: V1Manager) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    # pytest's own temporary root is 0700: the user could not reach a workdir below it.
    root = Path(tempfile.mkdtemp(prefix="tanvrit-runas-"))
    try:
        os.chmod(root, 0o711)
        spec = ExecSpec(job_id=f"job_{os.urandom(4).hex()}", command='id -u; pwd; echo "$HOME"; touch mine && echo ok',
                        env={}, timeout_seconds=30, workdir=root / "work", run_as=RunAs(nobody.pw_uid, nobody.pw_gid),
                        state_dir=root / "state")
        outcome, output = await _run(spec, v1)
        lines = output.decode().splitlines()
        assert lines == [str(nobody.pw_uid), str(root / "work"), str(root / "work"), "ok"], lines
        assert outcome.state == JobState.SUCCEEDED  # type: ignore[attr-defined]
        assert not (root / "work").exists() and not (root / "state").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_sample_reads_the_working_set_and_the_peak_since_the_last_one(tmp_path: Path, v1: V1Manager) -> None:
    # A process that held 128 MiB, freed it, and sleeps: the first reading's peak shows the
    # 128 MiB; the counter is reset by that reading, so the next one's peak does not.
    group = v1.create(f"job_{os.urandom(4).hex()}", Limits(memory_bytes=512 * 2**20))
    ready = tmp_path / "ready"
    join = "".join(f"echo $$ > {procs}; " for procs in group.procs_files)
    script = (f"import time\nb = bytearray(128 * 2**20)\ndel b\nopen({str(ready)!r}, 'w').close()\n"
              "time.sleep(60)\n")
    process = subprocess.Popen(["/bin/sh", "-c", f'{join}exec python3 -c "$0"', script])
    try:
        wait_for(ready.exists, message="the process held and freed its memory")
        first = group.sample()
        assert first is not None and first.peak_bytes is not None and not first.peak_is_lifetime
        assert first.peak_bytes >= 128 * 2**20 > first.memory_bytes
        second = group.sample()
        assert second is not None and second.peak_bytes is not None
        assert second.peak_bytes < 64 * 2**20
    finally:
        process.kill()
        process.wait()
        wait_for(lambda: not group.pids(), message="group empty")
        group.remove()


def test_sweep_kills_and_removes_an_earlier_life_left_in_another_memory_group(v1: V1Manager) -> None:
    """An agent restarted in another memory group (a sandbox gives each process its own; so
    does a re-run test) finds its earlier subtree by name: the processes left there and in its
    own subtree's unrecorded groups are killed and the groups removed, nested ones first, in
    every hierarchy; the job it re-adopts keeps running and is found where it is."""
    probe = v1.create("job_probe", Limits())
    memory_base, *other_bases = [path.parent.parent for path in probe.procs_files]
    probe.remove()
    earlier_parent = memory_base.parent / f"earlier-{os.urandom(4).hex()}"
    earlier = earlier_parent / memory_base.name
    groups = [earlier_parent, earlier, earlier / "job_old", earlier / "job_old" / "inner", earlier / "job_kept"]
    groups += [base / job for base in other_bases for job in ("job_old", "job_kept")]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for group in groups:
            group.mkdir()
        orphan = v1.create("job_orphan", Limits())  # this life's subtree, but no record speaks for it
        places = {"old": [earlier / "job_old", *(base / "job_old" for base in other_bases)],
                  "inner": [earlier / "job_old" / "inner"],
                  "kept": [earlier / "job_kept", *(base / "job_kept" for base in other_bases)],
                  "orphan": [path.parent for path in orphan.procs_files]}
        for key, directories in places.items():
            processes[key] = subprocess.Popen(["sleep", "60"], start_new_session=True)
            for directory in directories:
                (directory / "cgroup.procs").write_text(str(processes[key].pid))

        swept = v1.sweep({"job_kept"}, timeout=10)

        for key in ("old", "inner", "orphan"):
            assert processes[key].wait(timeout=10) == -9, key
        assert processes["kept"].poll() is None
        assert swept.killed == 3 and swept.kept_busy == ()
        assert not (earlier / "job_old").exists() and earlier.exists()  # it holds the re-adopted job
        assert all(not (base / "job_old").exists() and (base / "job_kept").exists() for base in other_bases)
        assert v1.open("job_orphan") is None
        re_adopted = v1.open("job_kept")
        assert re_adopted is not None and re_adopted.procs_files[0] == earlier / "job_kept" / "cgroup.procs"
        assert re_adopted.pids() == [processes["kept"].pid]
        assert re_adopted.sample() is not None  # metered where it runs
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
        for group in reversed(groups):
            wait_for(lambda group=group: not group.exists() or not (group / "cgroup.procs").read_text().split(),
                     message=f"{group} to empty")
            with contextlib.suppress(FileNotFoundError):
                group.rmdir()


def test_sweep_leaves_a_live_agent_of_the_same_name_alone(v1: V1Manager) -> None:
    """Two agents in two containers may share the subtree's name (a hash of the same data
    directory path). One whose own group (the subtree's parent) still holds a process is alive:
    its jobs are neither killed nor removed."""
    probe = v1.create("job_probe", Limits())
    memory_base = probe.procs_files[0].parent.parent
    probe.remove()
    other_parent = memory_base.parent / f"other-{os.urandom(4).hex()}"
    theirs = other_parent / memory_base.name
    groups = [other_parent, theirs, theirs / "job_theirs"]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for group in groups:
            group.mkdir()
        for directory in (other_parent, theirs / "job_theirs"):  # the other agent, and its job
            processes.append(subprocess.Popen(["sleep", "60"], start_new_session=True))
            (directory / "cgroup.procs").write_text(str(processes[-1].pid))

        swept = v1.sweep(set(), timeout=10)

        assert [process.poll() for process in processes] == [None, None]
        assert swept.killed == 0 and (theirs / "job_theirs").exists()
        assert v1.open("job_theirs") is None
    finally:
        for process in processes:
            process.kill()
            process.wait()
        for group in reversed(groups):
            wait_for(lambda group=group: not group.exists() or not (group / "cgroup.procs").read_text().split(),
                     message=f"{group} to empty")
            with contextlib.suppress(FileNotFoundError):
                group.rmdir()


async def test_a_job_starts_in_a_spare_group_made_ahead_with_its_own_limits(tmp_path: Path, v1: V1Manager) -> None:
    v1.prepare()
    [spare] = v1.spares()
    spare_paths = [h.fs.path(f"{h.base}/{spare}") for h in v1._hierarchies]
    assert all(path.is_dir() for path in spare_paths)
    # The job reads its own groups' limits: the spare had none; the job's were written.
    read = ('for c in memory pids; do p=$(grep -E "^[0-9]+:$c:" /proc/self/cgroup | cut -d: -f3); '
            'cat /sys/fs/cgroup/$c$p/memory.limit_in_bytes /sys/fs/cgroup/$c$p/pids.max 2>/dev/null; done; '
            'cat /proc/self/cgroup')
    spec = _spec(tmp_path, read, memory_bytes=96 * 2**20, pids=40)
    outcome, output = await _run(spec, v1)
    assert outcome.state == JobState.SUCCEEDED  # type: ignore[attr-defined]
    lines = output.decode().splitlines()
    assert lines[:2] == [str(96 * 2**20), "40"], lines
    memory_line = next(line for line in lines if ":memory:" in line)
    assert memory_line.endswith(f"/{spec.job_id}")
    # Used up (renamed to the job's group, since removed with it), and nothing left of it.
    assert v1.spares() == [] and not any(path.exists() for path in spare_paths)
    assert v1.open(spec.job_id) is None


def test_spares_are_bounded_unlisted_as_jobs_and_swept_at_start(v1: V1Manager) -> None:
    from agentd.cgroups.v1 import MAX_SPARES
    for _ in range(MAX_SPARES + 2):
        v1.prepare()
    spares = v1.spares()
    assert len(spares) == MAX_SPARES
    assert v1.job_names() == []
    # A restarted agent (a new manager on the same subtree) removes what the earlier life left.
    again = V1Manager(v1._hierarchies)
    swept = again.sweep(())
    assert len(swept.removed) == MAX_SPARES * len(v1._hierarchies)
    assert not any(h.fs.exists(f"{h.base}/{name}") for h in v1._hierarchies for name in spares)
