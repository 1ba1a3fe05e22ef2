"""Jobs never run as root by default: the job user, its work dir, and every escape a root job
had (reading the agent's credentials, finding a token to post events with, leaving its cgroup,
a daemonised grandchild outliving the job), tried by real jobs against a real agent process.

The decisions (who a job runs as) are checked purely, without processes, first.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from agentd.config import DEFAULT_JOB_USER, AgentConfig, load_agent_config, parse_uid_range
from agentd.daemon import MAX_CLAIMS_IN_FLIGHT
from agentd.job_user import (
    JobUids,
    JobUserError,
    job_uid_range_for,
    pick_job_uid,
    resolve_job_user,
    uids_with_processes,
)
from common.config import ConfigError
from tests.cgroup_fixtures import cleanup_agent_cgroups
from tests.procs import AgentProc, Coordinator, running_records, wait_for, wait_terminal

# --- who a job runs as (pure) --------------------------------------------------------------

ROOT = pwd.struct_passwd(("root", "x", 0, 0, "", "/root", "/bin/sh"))
JOBBER = pwd.struct_passwd((DEFAULT_JOB_USER, "x", 990, 990, "", "/nonexistent", "/usr/sbin/nologin"))
ALICE = pwd.struct_passwd(("alice", "x", 1000, 1000, "", "/home/alice", "/bin/sh"))
USERS = {user.pw_name: user for user in (ROOT, JOBBER, ALICE)}


def _resolve(run_as: str | None, euid: int, allow_root_jobs: bool = False) -> tuple[str, bool]:
    user = resolve_job_user(run_as, allow_root_jobs=allow_root_jobs, euid=euid, lookup=USERS.__getitem__,
                            by_uid=lambda uid: next(u for u in USERS.values() if u.pw_uid == uid))
    return user.name, user.switch


def test_a_root_agent_runs_jobs_as_the_job_user_by_default() -> None:
    assert _resolve(None, euid=0) == (DEFAULT_JOB_USER, True)
    assert _resolve("alice", euid=0) == ("alice", True)


def test_root_jobs_need_an_explicit_opt_in() -> None:
    with pytest.raises(JobUserError, match=r"^run_as='root' would run jobs as root.*allow_root_jobs = true"):
        _resolve("root", euid=0)
    assert _resolve("root", euid=0, allow_root_jobs=True) == ("root", False)


def test_a_normal_user_agent_runs_jobs_as_itself() -> None:
    # Hobby mode (`local up` as a normal user): nobody to switch to, nothing to drop.
    assert _resolve(None, euid=1000) == ("alice", False)
    assert _resolve("alice", euid=1000) == ("alice", False)
    with pytest.raises(JobUserError, match=r"needs the agent to run as root"):
        _resolve(DEFAULT_JOB_USER, euid=1000)


def test_a_missing_job_user_says_how_to_create_it() -> None:
    with pytest.raises(JobUserError, match=r"no such user 'tanvrit-job'; create it with `tanvrit-agentd install`"):
        resolve_job_user(None, allow_root_jobs=False, euid=0, lookup=lambda name: (_ for _ in ()).throw(KeyError(name)))


def test_work_dirs_are_outside_the_data_dir(tmp_path: Path) -> None:
    config = AgentConfig(coordinator="http://x", registration_token="t", data_dir=tmp_path / "agent")
    assert not config.work_root.is_relative_to(config.data_dir)


# --- a uid of its own per job (pure) ---------------------------------------------------------


def test_the_job_uid_range_is_parsed_and_bad_ones_are_refused(tmp_path: Path) -> None:
    assert parse_uid_range("61184-65519") == (61184, 65519)
    assert parse_uid_range("") is None
    base = {"coordinator": "http://x", "registration_token": "t", "data_dir": tmp_path}
    assert load_agent_config(None, dict(base)).job_uid_range == "61184-65519"
    for bad, why in [("61184", "must be \"LO-HI\""), ("a-b", "must be \"LO-HI\""), ("0-10", "uid 0 is root"),
                     ("20-10", "LO <= HI")]:
        with pytest.raises(ConfigError, match=why):
            load_agent_config(None, {**base, "job_uid_range": bad})


def test_only_a_root_agents_default_job_user_gets_a_uid_per_job() -> None:
    def range_for(run_as: str | None, euid: int, text: str = "61184-65519") -> tuple[int, int] | None:
        user = resolve_job_user(run_as, allow_root_jobs=True, euid=euid, lookup=USERS.__getitem__,
                                by_uid=lambda uid: next(u for u in USERS.values() if u.pw_uid == uid))
        return job_uid_range_for(user, text)

    assert range_for(None, euid=0) == range_for(DEFAULT_JOB_USER, euid=0) == (61184, 65519)  # as install writes it
    assert range_for(None, euid=0, text="") is None  # turned off: all share tanvrit-job
    assert range_for("alice", euid=0) is None  # the operator chose one user for every job
    assert range_for("root", euid=0) is None
    assert range_for(None, euid=1000) is None  # hobby mode: nothing to switch to


def test_job_uids_come_round_robin_and_skip_what_is_taken() -> None:
    assert pick_job_uid((100, 104), after=99, unusable=set()) == 100
    assert pick_job_uid((100, 104), after=100, unusable={101}) == 102
    assert pick_job_uid((100, 104), after=104, unusable={100}) == 101  # wraps round
    assert pick_job_uid((100, 101), after=99, unusable={100, 101}) is None


def test_a_job_uid_is_never_a_user_a_held_uid_or_one_a_process_runs_as() -> None:
    uids = JobUids((100, 104), existing={100, 5})
    assert uids.skipped == 1
    assert uids.allocate("a", busy={102}) == 101  # 100 is in /etc/passwd or /etc/group
    assert uids.allocate("a", busy={102}) == 101  # one per job, asked twice
    assert uids.allocate("b", busy={102}) == 103  # a process (a leftover, another agent's job) runs as 102
    assert not uids.full
    uids.restore("c", 104)  # a re-adopted job keeps its recorded uid
    assert uids.allocate("d", busy={102}) is None
    assert not uids.full  # 102 is free of jobs: a process has it, which may end any time
    assert uids.allocate("d", busy=set()) == 102 and uids.full
    uids.release("a")
    uids.release("d")
    assert uids.allocate("d", busy=set()) == 101  # on from 102, the last handed out: 103, 104 held, 100 a user
    assert uids.allocate("e", busy=set()) == 102
    assert [uids.held(job) for job in "abcde"] == [None, 103, 104, 101, 102]


# --- escapes, against a real agent (root, cgroup v1) -----------------------------------------


@dataclass
class Host:
    coordinator: Coordinator
    agent: AgentProc
    data_dir: Path
    work_root: Path
    pool: str
    job_uids: range  # the agent's job_uid_range
    shared: Path  # a sticky, world-writable dir: how tests and jobs of different uids meet

    def submit(self, command: str, env: dict[str, str] | None = None) -> str:
        # A tenth of a CPU each: the host's two CPUs would otherwise hold back a third job.
        with self.coordinator.client() as api:
            created = api.post("/v0/jobs", json={"type": "COMMAND", "command": command, "timeoutSeconds": 60,
                                                 "labels": {"pool": self.pool}, "env": env or {},
                                                 "resources": {"cpus": 0.1, "memoryMb": 256}})
            assert created.status_code == 201, created.text
            return str(created.json()["id"])

    def finish(self, job_id: str) -> tuple[dict[str, Any], str]:
        with self.coordinator.client() as api:
            job = wait_terminal(api, job_id, timeout=90)
            return job, api.get(f"/v0/jobs/{job['id']}/logs").text

    def run(self, command: str) -> tuple[dict[str, Any], str]:
        return self.finish(self.submit(command))


def _free_uid_range(size: int) -> range:
    """A range no user, group or process has, far from the default one, so that agents other
    tests run on this host at the same time hand out other uids."""
    taken = {user.pw_uid for user in pwd.getpwall()} | {p.info["uids"].real for p in psutil.process_iter(["uids"])}
    while True:
        low = random.randrange(300_000, 3_000_000, 16)
        if not taken & set(range(low, low + size)):
            return range(low, low + size)


def _uid_of(pid: int) -> int:
    return int(psutil.Process(pid).uids().real)


@pytest.fixture(scope="module")
def host(shared_coordinator: Coordinator) -> Iterator[Host]:
    if os.geteuid() != 0:
        pytest.skip("switching to the job user needs root")
    if not Path("/sys/fs/cgroup/memory/cgroup.procs").exists() or not os.access("/sys/fs/cgroup/memory", os.W_OK):
        pytest.skip("needs writable cgroup v1 hierarchies")
    # Under /tmp, in a directory anyone may traverse: what keeps a job out of the agent's data
    # dir must be the data dir's own mode, not a private pytest directory above it.
    base = Path(tempfile.mkdtemp(prefix="tanvrit-jobuser-", dir="/tmp"))
    base.chmod(0o755)
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    data_dir = base / "agent"
    pool = f"jobuser-{uuid.uuid4().hex[:8]}"
    # Two uids: two jobs at once get one each, and a third gets one only once one is released.
    uids = _free_uid_range(2)
    agent = AgentProc(shared_coordinator, data_dir, labels=(f"pool={pool}",), root_jobs=False,
                      extra_args=("--job-uid-range", f"{uids[0]}-{uids[-1]}")).start()
    work_root = AgentConfig(coordinator="x", registration_token="x", data_dir=data_dir).work_root
    try:
        agent.agent_id  # noqa: B018 (waits until registered)
        yield Host(shared_coordinator, agent, data_dir, work_root, pool, uids, shared)
    finally:
        agent.stop()
        cleanup_agent_cgroups(data_dir)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work_root, ignore_errors=True)


def test_busy_uids_are_every_real_effective_and_saved_uid_of_every_process() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to start processes as other uids")
    # Real and saved uid one, effective another: a setuid program's shape.
    code = "import os, sys; os.setresuid(61201, 61202, 61203); sys.stdout.write('ready'); sys.stdout.flush(); " \
           "sys.stdin.read()"
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        assert child.stdout is not None and child.stdout.read(5) == b"ready"
        try:
            busy = uids_with_processes()
            assert {61201, 61202, 61203} <= busy
            assert busy >= {uid for process in psutil.process_iter(["uids"]) if process.info["uids"]
                            for uid in process.info["uids"] if uid in (0, 61201, 61202, 61203)}
        finally:
            assert child.stdin is not None
            child.stdin.close()
    assert not {61201, 61202, 61203} & uids_with_processes()


def test_jobs_run_as_the_job_user_in_a_work_dir_outside_the_data_dir(host: Host) -> None:
    job, log = host.run("id -u; id -g; id -G; pwd; stat -c '%a %u %g' .")
    assert job["state"] == "SUCCEEDED", log
    uid, gid, groups, cwd, listing = log.splitlines()
    assert int(uid) in host.job_uids and gid == groups == uid  # its own uid and gid, no other group
    assert Path(cwd).parent == host.work_root and not Path(cwd).is_relative_to(host.data_dir)
    assert listing == f"700 {uid} {uid}"
    assert "jobs run as" in host.agent.log() and "run_as=tanvrit-job" in host.agent.log()
    assert "each job runs as a uid of its own" in host.agent.log()


def test_the_agents_credentials_and_spool_are_out_of_reach(host: Host) -> None:
    targets = [host.data_dir / "agent.json", host.data_dir / "spool.sqlite3", host.data_dir]
    command = "; ".join(f"if cat {t} >/dev/null 2>&1 || ls {t} >/dev/null 2>&1; then echo READ {t}; "
                        f"else echo DENIED {t}; fi" for t in targets)
    job, log = host.run(f"ls -d {host.data_dir.parent} >/dev/null && echo PARENT-OK; {command}")
    assert job["state"] == "SUCCEEDED", log
    assert log.splitlines() == ["PARENT-OK", *(f"DENIED {t}" for t in targets)]
    assert host.data_dir.stat().st_mode & 0o777 == 0o700


def test_no_token_to_post_events_with_is_within_reach(host: Host) -> None:
    # Everything a job could scrape: other processes' argv and environment (the agent's among
    # them), and every file in the agent's data dir. The pattern is built at run time so that
    # the search does not find itself.
    creds = json.loads((host.data_dir / "agent.json").read_text())
    secrets = {creds["agentToken"], host.coordinator.registration_token}
    command = ('p=tcp; grep -rshao "${p}_[a-z]*_[A-Za-z0-9_-]*" /proc/[0-9]*/cmdline /proc/[0-9]*/environ '
               f'{host.data_dir} 2>/dev/null | sort -u; echo searched')
    job, log = host.run(command)
    assert job["state"] == "SUCCEEDED" and log.rstrip().endswith("searched"), log
    found = set(log.split())
    assert not found & secrets
    # The agent's token works: it is the job that cannot have it.
    with host.coordinator.client(creds["agentToken"]) as agent_api:
        assert agent_api.post("/agent/v0/events", json={"events": []}).status_code == 200


LEAVE_THE_CGROUP = r"""/usr/bin/python3 - <<'EOF'
import os
from pathlib import PurePosixPath
tried = []
for line in open("/proc/self/cgroup"):
    _, controllers, path = line.strip().split(":", 2)
    mount = f"/sys/fs/cgroup/{controllers}"
    if not controllers or not os.path.isdir(mount):
        continue
    for ancestor in PurePosixPath(path).parents:
        target = f"{mount}{ancestor}/cgroup.procs".replace("//", "/")
        try:
            with open(target, "w") as handle:
                handle.write(str(os.getpid()))
            tried.append(f"ESCAPED {target}")
        except OSError:
            tried.append(f"denied {target}")
print("\n".join(tried))
print("memory:" + next(l.split(":", 2)[2] for l in open("/proc/self/cgroup") if ":memory:" in l).strip())
EOF"""


def test_a_job_cannot_move_itself_into_a_parent_cgroup(host: Host) -> None:
    job, log = host.run(LEAVE_THE_CGROUP)
    assert job["state"] == "SUCCEEDED", log
    lines = log.splitlines()
    attempts = [line for line in lines if line.startswith(("denied", "ESCAPED"))]
    assert any(line.endswith("/sys/fs/cgroup/memory/cgroup.procs") for line in attempts), attempts
    assert attempts and all(line.startswith("denied") for line in attempts), attempts
    assert lines[-1].startswith("memory:") and lines[-1].endswith(job["id"])


DOUBLE_FORK = r"""/usr/bin/python3 - <<'EOF'
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print(f"grandchild {os.getpid()}", flush=True)
        while time.process_time() < 0.6:  # burn CPU the job must be billed for
            pass
        open("burned", "w").close()
        time.sleep(300)  # then outlive the job, unless it is killed with it
    os._exit(0)
os.wait()
EOF
while [ ! -e burned ]; do sleep 0.05; done; echo job-done"""


def test_a_double_forked_grandchild_dies_with_the_job_and_its_cpu_is_billed(host: Host) -> None:
    job, log = host.run(DOUBLE_FORK)
    assert job["state"] == "SUCCEEDED", log
    pid = int(next(line.split()[1] for line in log.splitlines() if line.startswith("grandchild")))
    # Killed before the job was reported finished: no waiting here.
    try:
        process = psutil.Process(pid)
        survived = process.status() != psutil.STATUS_ZOMBIE and process.uids().real in host.job_uids
    except psutil.NoSuchProcess:
        survived = False
    assert not survived
    assert job["usage"]["cpuSeconds"] >= 0.5


# --- jobs of one agent are apart from each other -------------------------------------------------

HOLDER = "echo $$ > {shared}/{tag}.pid; while [ ! -e {shared}/{tag}.go ]; do sleep 0.05; done; id -u"

PRYING = """pid=$(cat {shared}/{tag}.pid); id -u
if grep -qa SECRET /proc/$pid/environ 2>/dev/null; then echo environ READ; else echo environ denied; fi
if ls /proc/$pid/cwd/ >/dev/null 2>&1; then echo cwd READ; else echo cwd denied; fi
if ls {workdir} >/dev/null 2>&1; then echo workdir READ; else echo workdir denied; fi
if kill -0 $pid 2>/dev/null; then echo signal SENT; else echo signal denied; fi
touch {shared}/{tag}.go"""


def test_a_job_cannot_read_signal_or_enter_another_running_job(host: Host) -> None:
    tag = uuid.uuid4().hex[:8]
    first = host.submit(HOLDER.format(shared=host.shared, tag=tag), env={"SECRET": "hunter2"})
    pid = int(wait_for(lambda: _read(host.shared / f"{tag}.pid"), message="first job running", timeout=60))
    # The target is right: its environment holds the secret, and root (this test) reads it.
    assert b"SECRET=hunter2" in Path(f"/proc/{pid}/environ").read_bytes()
    second = host.submit(PRYING.format(shared=host.shared, tag=tag, workdir=host.work_root / first))
    job, log = host.finish(second)
    assert job["state"] == "SUCCEEDED", log
    first_job, first_log = host.finish(first)
    assert first_job["state"] == "SUCCEEDED", first_log
    prying_uid, *tried = log.splitlines()
    assert tried == ["environ denied", "cwd denied", "workdir denied", "signal denied"]
    assert {int(prying_uid), int(first_log)} == set(host.job_uids)  # one each
    # Both released when they ended: a third job (the range has two) gets one at once.
    job, log = host.run("id -u")
    assert job["state"] == "SUCCEEDED" and int(log) in host.job_uids, log
    assert not (host.work_root / first).exists() and not (host.work_root / second).exists()


def test_a_job_waits_in_the_queue_while_every_uid_is_held(host: Host) -> None:
    tag = uuid.uuid4().hex[:8]
    holders = [host.submit(HOLDER.format(shared=host.shared, tag=f"{tag}{n}")) for n in range(2)]
    pids = [int(wait_for(lambda n=n: _read(host.shared / f"{tag}{n}.pid"), message="holders running", timeout=60))
            for n in range(2)]
    uids = [_uid_of(pid) for pid in pids]
    third = host.submit("id -u")

    def released() -> int:
        lines = (host.data_dir / "agent.log").read_text().splitlines()
        return sum(1 for line in lines if "releasing an assignment" in line and f"job_id={third}" in line)

    # Claimed at most by the claims already in flight when the last uid was taken (each
    # releases it), then left queued: no claim is sent while every uid is held. Watched for a
    # second: without that, it goes back and forth at the speed of the loopback.
    watch_until = time.monotonic() + 1.0
    while time.monotonic() < watch_until:
        assert released() <= MAX_CLAIMS_IN_FLIGHT
        time.sleep(0.05)
    with host.coordinator.client() as api:
        assert api.get(f"/v0/jobs/{third}").json()["state"] == "QUEUED"
    (host.shared / f"{tag}0.go").touch()
    job, log = host.finish(third)
    # It ran as the uid the first holder gave back.
    assert job["state"] == "SUCCEEDED" and int(log) == uids[0] != uids[1], log
    (host.shared / f"{tag}1.go").touch()
    assert [host.finish(holder)[0]["state"] for holder in holders] == ["SUCCEEDED", "SUCCEEDED"]
    assert released() <= MAX_CLAIMS_IN_FLIGHT


def _read(path: Path) -> str | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    return text if text.endswith("\n") else None


def test_a_re_adopted_job_keeps_its_uid(shared_coordinator: Coordinator, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to job uids needs root")
    if not Path("/sys/fs/cgroup/memory/cgroup.procs").exists() or not os.access("/sys/fs/cgroup/memory", os.W_OK):
        pytest.skip("needs writable cgroup v1 hierarchies")
    base = Path(tempfile.mkdtemp(prefix="tanvrit-jobuid-", dir="/tmp"))
    base.chmod(0o755)
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    data_dir = base / "agent"
    pool = f"jobuid-{uuid.uuid4().hex[:8]}"
    uids = _free_uid_range(2)
    work_root = AgentConfig(coordinator="x", registration_token="x", data_dir=data_dir).work_root

    def agent() -> AgentProc:
        return AgentProc(shared_coordinator, data_dir, labels=(f"pool={pool}",), root_jobs=False,
                         extra_args=("--job-uid-range", f"{uids[0]}-{uids[-1]}")).start()

    first = agent()
    restarted: AgentProc | None = None
    pid: int | None = None
    try:
        host = Host(shared_coordinator, first, data_dir, work_root, pool, uids, shared)
        job_id = host.submit(HOLDER.format(shared=shared, tag="held"))
        pid = int(wait_for(lambda: _read(shared / "held.pid"), message="job running", timeout=60))
        uid = _uid_of(pid)
        # Re-adoption needs the job's launch on disk; the agent records it as the job starts, so a
        # loaded disk may not have it yet when the job has already written its pid.
        wait_for(lambda: any("launched" in body for body in running_records(data_dir).values()),
                 message="the job's launch recorded in the spool", timeout=60)
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        with sqlite3.connect(data_dir / "spool.sqlite3") as db:
            [(body,)] = db.execute("SELECT body FROM running").fetchall()
        assert json.loads(body)["jobUid"] == uid
        restarted = agent()
        wait_for(lambda: "re-adopted" in restarted.log(), message="job re-adopted", timeout=60)
        # The re-adopted job holds its uid: a new job gets the other one, while it runs.
        job, log = host.run("id -u")
        assert job["state"] == "SUCCEEDED" and {int(log), uid} == set(uids), log
        (shared / "held.go").touch()
        job, log = host.finish(job_id)
        assert job["state"] == "SUCCEEDED" and int(log) == uid, log
        assert "job re-adopted" in restarted.log()
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for proc in (first, restarted):
            if proc is not None:
                proc.stop()
        cleanup_agent_cgroups(data_dir)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work_root, ignore_errors=True)
