"""The cgroup v2 backend on a fake cgroupfs tree: delegation set-up, limits, kill, metering
files, OOM detection, removal; and detection from /proc texts."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentd.cgroups.base import CgroupError, CgroupFs, Limits, deepest_first, find_groups
from agentd.cgroups.detect import detect_cgroups, own_v1_paths, parse_mountinfo
from agentd.cgroups.v2 import V2Manager, own_v2_path
from tests.cgroupfs import FakeCgroup2Fs

SERVICE = "/system.slice/tanvrit-agentd.service"


def _delegated(tmp_path: Path, controllers: str = "cpu memory pids") -> FakeCgroup2Fs:
    fs = FakeCgroup2Fs(tmp_path / "cgroup")
    fs.write("cgroup.subtree_control", "+cpu +memory +pids +io")
    fs.mkdir("/system.slice")
    fs.write("/system.slice/cgroup.subtree_control", "+" + " +".join(controllers.split()))
    fs.mkdir(SERVICE)
    fs.write(f"{SERVICE}/cgroup.procs", "4242")  # systemd started the agent here
    return fs


def test_own_path_is_read_from_the_unified_line() -> None:
    assert own_v2_path("12:memory:/x\n0::/system.slice/tanvrit-agentd.service\n") == SERVICE
    assert own_v2_path("4:memory:/x\n") is None
    assert own_v1_paths("4:memory:/a/b\n2:cpu,cpuacct:/c\n0::/\n") == {"memory": "/a/b", "cpu": "/c", "cpuacct": "/c"}


def test_setup_moves_the_agent_into_a_leaf_and_enables_controllers(tmp_path: Path) -> None:
    fs = _delegated(tmp_path)
    manager = V2Manager(fs, SERVICE, pid=4242)
    manager.setup()
    assert fs.read(f"{SERVICE}/cgroup.procs").strip() == ""
    assert fs.read(f"{SERVICE}/agent/cgroup.procs").split() == ["4242"]
    assert fs.read(f"{SERVICE}/cgroup.subtree_control").split() == ["cpu", "memory", "pids"]
    assert manager.controllers == ("cpu", "memory", "pids")


def test_a_job_group_gets_its_limits(tmp_path: Path) -> None:
    fs = _delegated(tmp_path)
    manager = V2Manager(fs, SERVICE, pid=4242)
    manager.setup()
    group = manager.create("job_1", Limits(memory_bytes=256 * 2**20, cpus=1.5, pids=64))
    assert fs.read(f"{SERVICE}/job_1/memory.max") == str(256 * 2**20)
    assert fs.read(f"{SERVICE}/job_1/cpu.max") == "150000 100000"
    assert fs.read(f"{SERVICE}/job_1/pids.max") == "64"
    assert group.procs_files == [fs.path(f"{SERVICE}/job_1/cgroup.procs")]
    assert manager.job_names() == ["job_1"]
    assert manager.open("job_1") is not None and manager.open("job_2") is None


def test_counters_oom_and_kill_are_read_from_the_group(tmp_path: Path) -> None:
    fs = _delegated(tmp_path)
    manager = V2Manager(fs, SERVICE, pid=4242)
    manager.setup()
    group = manager.create("job_1", Limits())
    fs.path(f"{SERVICE}/job_1/cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    fs.path(f"{SERVICE}/job_1/memory.current").write_text(f"{2**30}\n")
    sample = group.sample()
    assert sample is not None and sample.cpu_seconds == 2.5 and sample.memory_bytes == 2**30
    assert not group.oom_killed()
    fs.path(f"{SERVICE}/job_1/memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert group.oom_killed()
    group.signal(signal.SIGKILL)
    assert fs.read(f"{SERVICE}/job_1/cgroup.kill") == "1"


def test_memory_is_the_working_set_as_on_v1(tmp_path: Path) -> None:
    # memory.current counts page cache; the working set leaves out the inactive file cache
    # (the kubelet's definition), the same figure v1 gives from usage_in_bytes - total_inactive_file.
    fs = _delegated(tmp_path)
    manager = V2Manager(fs, SERVICE, pid=4242)
    manager.setup()
    group = manager.create("job_1", Limits())
    fs.path(f"{SERVICE}/job_1/memory.current").write_text(f"{2**30}\n")
    fs.path(f"{SERVICE}/job_1/memory.stat").write_text(
        f"anon {3 * 2**28}\nfile {2**28}\nactive_file 0\ninactive_file {2**28}\n")
    fs.path(f"{SERVICE}/job_1/memory.peak").write_text(f"{3 * 2**29}\n")
    sample = group.sample()
    assert sample is not None
    assert sample.memory_bytes == 3 * 2**28
    assert (sample.peak_bytes, sample.peak_is_lifetime, sample.inactive_file_bytes) == (3 * 2**29, True, 2**28)
    fs.path(f"{SERVICE}/job_1/memory.peak").unlink()  # before Linux 5.19: no peak, still a sample
    sample = group.sample()
    assert sample is not None and sample.peak_bytes is None and sample.memory_bytes == 3 * 2**28


def test_removal_needs_an_empty_group(tmp_path: Path) -> None:
    fs = _delegated(tmp_path)
    manager = V2Manager(fs, SERVICE, pid=4242)
    manager.setup()
    group = manager.create("job_1", Limits())
    fs.write(f"{SERVICE}/job_1/cgroup.procs", "999999")
    assert group.pids() == [999999]
    with pytest.raises(OSError, match="busy"):
        group.remove()
    fs.path(f"{SERVICE}/job_1/cgroup.procs").write_text("")
    group.remove()
    assert manager.job_names() == []


def test_no_memory_controller_is_an_error(tmp_path: Path) -> None:
    fs = _delegated(tmp_path, controllers="cpu pids")
    with pytest.raises(CgroupError, match="memory controller"):
        V2Manager(fs, SERVICE, pid=4242).setup()


MOUNTINFO_V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
MOUNTINFO_HYBRID = (
    "31 25 0:27 / /sys/fs/cgroup/memory rw shared:5 - cgroup cgroup rw,memory\n"
    "32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw shared:6 - cgroup cgroup rw,cpu,cpuacct\n"
    "33 25 0:29 / /sys/fs/cgroup/unified rw shared:7 - cgroup2 cgroup2 rw\n"
    "34 25 0:30 / /proc rw - proc proc rw\n"
)


def test_mountinfo_lists_cgroup_mounts_only() -> None:
    mounts = parse_mountinfo(MOUNTINFO_HYBRID)
    assert [(m.fstype, m.mount_point) for m in mounts] == [
        ("cgroup", "/sys/fs/cgroup/memory"), ("cgroup", "/sys/fs/cgroup/cpu,cpuacct"),
        ("cgroup2", "/sys/fs/cgroup/unified")]
    assert {"cpu", "cpuacct"} <= mounts[1].options


def test_detect_picks_v2_in_the_delegated_subtree(tmp_path: Path) -> None:
    fs = _delegated(tmp_path)
    # The prefix stands in for "/": the mount point /sys/fs/cgroup resolves below it.
    prefix = tmp_path / "root"
    (prefix / "sys/fs").mkdir(parents=True)
    (prefix / "sys/fs/cgroup").symlink_to(fs.root)
    manager = detect_cgroups(mountinfo=MOUNTINFO_V2, proc_self_cgroup=f"0::{SERVICE}\n", prefix=prefix, pid=4242)
    assert manager.kind == "v2"
    assert fs.read(f"{SERVICE}/agent/cgroup.procs").split() == ["4242"]


def test_detect_falls_back_to_none_with_a_reason(tmp_path: Path) -> None:
    manager = detect_cgroups(mountinfo="34 25 0:30 / /proc rw - proc proc rw\n", proc_self_cgroup="0::/\n",
                             prefix=tmp_path)
    assert manager.kind == "none"
    assert "no cgroup v1 controller hierarchies" in getattr(manager, "reason", "")


@pytest.fixture
def sleepers() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start ``sleep`` processes (this test's own children: the only ones put in a fake group);
    all killed and reaped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen(["sleep", "60"], start_new_session=True))
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.wait()


def _dead(process: subprocess.Popen[bytes]) -> bool:
    try:
        return process.wait(timeout=10) == -signal.SIGKILL
    except subprocess.TimeoutExpired:
        return False


def test_sweep_removes_what_an_earlier_life_left_and_keeps_re_adopted_jobs(
        tmp_path: Path, sleepers: Callable[[], subprocess.Popen[bytes]]) -> None:
    """At the root (no systemd) the subtree is named for the agent. What an earlier life of the
    same agent left, in its subtree now or one elsewhere, is killed and removed deepest first;
    the groups of jobs to re-adopt stay and are found where they are; another agent's subtree
    is never touched."""
    fs = FakeCgroup2Fs(tmp_path / "cgroup", controllers="cpu memory pids")
    fs.write("cgroup.subtree_control", "+cpu +memory +pids")
    agent, other_agent_job = sleepers(), sleepers()
    manager = V2Manager(fs, "/", pid=agent.pid, base_name="tanvrit-agentd-me")
    manager.setup()
    assert manager.base == "/tanvrit-agentd-me"
    earlier = "/process_api/old/tanvrit-agentd-me"
    for rel in ["/tanvrit-agentd-other", "/tanvrit-agentd-other/job_x", "/process_api", "/process_api/old", earlier,
                f"{earlier}/agent", f"{earlier}/job_gone", f"{earlier}/job_gone/inner", f"{earlier}/job_kept",
                "/tanvrit-agentd-me/job_orphan", "/tanvrit-agentd-me/job_running"]:
        fs.mkdir(rel)
    fs.write("/tanvrit-agentd-other/job_x/cgroup.procs", str(other_agent_job.pid))
    doomed = {rel: sleepers() for rel in [f"{earlier}/job_gone", f"{earlier}/job_gone/inner",
                                          "/tanvrit-agentd-me/job_orphan"]}
    kept = {rel: sleepers() for rel in [f"{earlier}/job_kept", "/tanvrit-agentd-me/job_running"]}
    for rel, process in {**doomed, **kept}.items():
        fs.write(f"{rel}/cgroup.procs", str(process.pid))

    swept = manager.sweep({"job_kept", "job_running"}, timeout=10)

    assert all(_dead(process) for process in doomed.values())
    assert all(process.poll() is None for process in [*kept.values(), agent, other_agent_job])
    # The earlier life's agent leaf goes too (empty: that process is gone, as this one holds
    # the data directory's lock).
    assert sorted(swept.removed) == sorted(fs.path(rel) for rel in [*doomed, f"{earlier}/agent"])
    assert (swept.kept_busy, swept.killed) == ((), 3)
    assert fs.children("/") == ["process_api", "tanvrit-agentd-me", "tanvrit-agentd-other"]
    assert fs.children("/tanvrit-agentd-other") == ["job_x"]
    assert fs.children(earlier) == ["job_kept"]  # held for the job being re-adopted
    assert fs.children("/tanvrit-agentd-me") == ["agent", "job_running"]
    re_adopted = manager.open("job_kept")
    assert re_adopted is not None and re_adopted.procs_files == [fs.path(f"{earlier}/job_kept/cgroup.procs")]
    assert re_adopted.pids() == [kept[f"{earlier}/job_kept"].pid]
    running = manager.open("job_running")
    assert running is not None and running.pids() == [kept["/tanvrit-agentd-me/job_running"].pid]

    # The re-adopted job ends; the next start removes the rest of the earlier subtree.
    re_adopted.signal(signal.SIGKILL)
    assert _dead(kept[f"{earlier}/job_kept"])
    re_adopted.remove()
    swept = manager.sweep({"job_running"}, timeout=10)
    assert swept.removed == (fs.path(earlier),)
    assert fs.children("/process_api/old") == []
    assert kept["/tanvrit-agentd-me/job_running"].poll() is None and agent.poll() is None


def test_sweep_reports_a_group_that_stays_busy_and_moves_on(tmp_path: Path) -> None:
    """A process the kill does not remove (here: a pid the fake only records) leaves its group
    in place after the wait; the sweep says so instead of holding up the agent's start."""
    fs = FakeCgroup2Fs(tmp_path / "cgroup", controllers="cpu memory pids")
    fs.write("cgroup.subtree_control", "+cpu +memory +pids")
    manager = V2Manager(fs, "/", pid=os.getpid(), base_name="tanvrit-agentd-me")
    manager.setup()
    fs.mkdir("/tanvrit-agentd-me/job_stuck")
    fs.path("/tanvrit-agentd-me/job_stuck/cgroup.kill").unlink()  # before Linux 5.14: pids are signalled
    fs.write("/tanvrit-agentd-me/job_stuck/cgroup.procs", "2147483646")  # no such process
    swept = manager.sweep(set(), timeout=0)
    assert swept.kept_busy == (fs.path("/tanvrit-agentd-me/job_stuck"),) and swept.removed == ()
    assert fs.children("/tanvrit-agentd-me") == ["agent", "job_stuck"]


def test_sweep_leaves_a_live_agent_of_the_same_name_alone(
        tmp_path: Path, sleepers: Callable[[], subprocess.Popen[bytes]]) -> None:
    """The subtree's name is a hash of the data directory's path, which two agents in two
    containers (each with its own /var/lib/tanvrit-agentd) share. A subtree of that name whose
    agent leaf still holds a process is another agent's, alive: never killed nor removed."""
    fs = FakeCgroup2Fs(tmp_path / "cgroup", controllers="cpu memory pids")
    fs.write("cgroup.subtree_control", "+cpu +memory +pids")
    me, other, other_job = sleepers(), sleepers(), sleepers()
    manager = V2Manager(fs, "/", pid=me.pid, base_name="tanvrit-agentd-same")
    manager.setup()
    theirs = "/docker/c2/tanvrit-agentd-same"
    for rel in ["/docker", "/docker/c2", theirs, f"{theirs}/agent", f"{theirs}/job_theirs"]:
        fs.mkdir(rel)
    fs.write(f"{theirs}/agent/cgroup.procs", str(other.pid))
    fs.write(f"{theirs}/job_theirs/cgroup.procs", str(other_job.pid))

    swept = manager.sweep(set(), timeout=10)

    assert other_job.poll() is None and other.poll() is None
    assert (swept.removed, swept.killed) == ((), 0)
    assert fs.children(theirs) == ["agent", "job_theirs"]
    assert manager.open("job_theirs") is None  # not one of ours to re-adopt either


def test_the_sweep_order_survives_a_hostile_tree(tmp_path: Path) -> None:
    """A job that may make groups (one running as a non-root agent's own user, in a delegated
    subtree) can nest them deeper than Python's recursion limit, or, on a tree that allows them,
    plant a symlink that loops: the order of removal is still found, deepest first, and the walk
    never follows a link out of the group."""
    root = tmp_path / "cgroup"
    deep = root / "tanvrit-agentd-me" / "job_deep"
    chain = "/".join(["d"] * 1100)
    fs = CgroupFs(root)
    try:
        deep.mkdir(parents=True)
        for depth in range(1, 1101):
            (deep / "/".join(["d"] * depth)).mkdir()
        (deep / "loop").symlink_to(root, target_is_directory=True)
        order = deepest_first(fs, "/tanvrit-agentd-me/job_deep")
        assert len(order) == 1101
        assert order[0] == f"/tanvrit-agentd-me/job_deep/{chain}" and order[-1] == "/tanvrit-agentd-me/job_deep"
        assert find_groups(fs, "loop") == []
    finally:
        # Not shutil.rmtree (nor pytest's clean-up of old temporary directories): they recurse.
        subprocess.run(["rm", "-rf", "--", str(deep)], check=True)


def test_a_sweep_without_a_wait_still_kills(tmp_path: Path, sleepers: Callable[[], subprocess.Popen[bytes]]) -> None:
    """``timeout`` bounds the wait after the kill, not the kill: with none, the processes it
    counts as killed are signalled all the same (the group stays, reported busy, if they have
    not left yet)."""
    fs = FakeCgroup2Fs(tmp_path / "cgroup", controllers="cpu memory pids")
    fs.write("cgroup.subtree_control", "+cpu +memory +pids")
    manager = V2Manager(fs, "/", pid=os.getpid(), base_name="tanvrit-agentd-me")
    manager.setup()
    fs.mkdir("/tanvrit-agentd-me/job_orphan")
    orphan = sleepers()
    fs.write("/tanvrit-agentd-me/job_orphan/cgroup.procs", str(orphan.pid))
    swept = manager.sweep(set(), timeout=0)
    assert swept.killed == 1 and _dead(orphan)
