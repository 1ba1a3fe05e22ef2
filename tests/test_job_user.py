"""Jobs never run as root by default: the job user, its work dir, and every escape a root job
had (reading the agent's credentials, finding a token to post events with, leaving its cgroup,
a daemonised grandchild outliving the job), tried by real jobs against a real agent process.

The decisions (who a job runs as) are checked purely, without processes, first.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from agentd.config import DEFAULT_JOB_USER, AgentConfig
from agentd.job_user import JobUserError, resolve_job_user
from tests.cgroup_fixtures import cleanup_agent_cgroups
from tests.procs import AgentProc, Coordinator, wait_terminal

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


# --- escapes, against a real agent (root, cgroup v1) -----------------------------------------


@dataclass
class Host:
    coordinator: Coordinator
    agent: AgentProc
    data_dir: Path
    work_root: Path
    pool: str
    job_uid: int

    def run(self, command: str) -> tuple[dict[str, Any], str]:
        with self.coordinator.client() as api:
            created = api.post("/v0/jobs", json={"type": "COMMAND", "command": command, "timeoutSeconds": 60,
                                                 "labels": {"pool": self.pool}})
            assert created.status_code == 201, created.text
            job = wait_terminal(api, created.json()["id"], timeout=90)
            return job, api.get(f"/v0/jobs/{job['id']}/logs").text


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
    data_dir = base / "agent"
    pool = f"jobuser-{uuid.uuid4().hex[:8]}"
    agent = AgentProc(shared_coordinator, data_dir, labels=(f"pool={pool}",), root_jobs=False).start()
    work_root = AgentConfig(coordinator="x", registration_token="x", data_dir=data_dir).work_root
    try:
        agent.agent_id  # noqa: B018 (waits until registered)
        yield Host(shared_coordinator, agent, data_dir, work_root, pool, pwd.getpwnam(DEFAULT_JOB_USER).pw_uid)
    finally:
        agent.stop()
        cleanup_agent_cgroups(data_dir)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work_root, ignore_errors=True)


def test_jobs_run_as_the_job_user_in_a_work_dir_outside_the_data_dir(host: Host) -> None:
    job, log = host.run("id -u; pwd; ls -ld .")
    assert job["state"] == "SUCCEEDED", log
    uid, cwd, listing = log.splitlines()
    assert int(uid) == host.job_uid != 0
    assert Path(cwd).parent == host.work_root and not Path(cwd).is_relative_to(host.data_dir)
    assert listing.startswith("drwx------") and DEFAULT_JOB_USER in listing
    assert "jobs run as" in host.agent.log() and "run_as=tanvrit-job" in host.agent.log()


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
        survived = process.status() != psutil.STATUS_ZOMBIE and process.uids().real == host.job_uid
    except psutil.NoSuchProcess:
        survived = False
    assert not survived
    assert job["usage"]["cpuSeconds"] >= 0.5
