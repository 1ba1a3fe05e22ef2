"""Who a job runs as, and the directory its work dir lives in.

    agent euid 0 ── run_as unset ─▶ tanvrit-job (created by `tanvrit-agentd install`)
                 ── run_as = U ──▶ U; a uid-0 U only with allow_root_jobs (warned at every start)
    agent euid N ── run_as unset ─▶ the agent's own user (it cannot switch; jobs can read what
                                    the agent can: hobby mode on one's own machine)
                 ── run_as = U ──▶ U must be the agent's own user

A root agent whose jobs run as the default job user gives each running job a uid (and gid)
of its own from ``job_uid_range`` (like systemd's DynamicUser): jobs of one agent cannot read
each other's /proc/<pid>/environ, enter each other's work dirs or signal each other. The uid
is recorded with the job in the spool, so a re-adopted job keeps it; it is released when the
job ends, and never handed out while any process runs as it. An explicit ``run_as`` means the
operator chose one user for all jobs, and gets exactly that.

Job work dirs live below a work root outside the agent's data dir; the data dir is 0700, so
the job user reaches neither the agent's credentials nor its spool.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agentd.config import DEFAULT_JOB_USER, parse_uid_range
from agentd.exits import EX_CONFIG, EX_NOPERM, EX_NOUSER, EX_UNAVAILABLE


class JobUserError(Exception):
    """The job user cannot be used (absent, root without opt-in, not reachable from this agent).
    ``exit_code``: the sysexits status the agent exits with (``agentd.exits``)."""

    def __init__(self, message: str, *, exit_code: int = EX_CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class JobUser:
    name: str
    uid: int
    gid: int
    switch: bool  # the agent drops to this user for each job (it runs as another one)

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def resolve_job_user(run_as: str | None, *, allow_root_jobs: bool, euid: int,
                     lookup: Callable[[str], pwd.struct_passwd] = pwd.getpwnam,
                     by_uid: Callable[[int], pwd.struct_passwd] = pwd.getpwuid) -> JobUser:
    """The user jobs run as; raises ``JobUserError`` with the fix in its message."""
    if run_as is None:
        if euid != 0:
            own = by_uid(euid)
            return JobUser(own.pw_name, own.pw_uid, own.pw_gid, switch=False)
        run_as = DEFAULT_JOB_USER
    try:
        user = lookup(run_as)
    except KeyError:
        hint = (f"create it with `tanvrit-agentd install` or `useradd --system --no-create-home "
                f"--shell /usr/sbin/nologin {run_as}`") if run_as == DEFAULT_JOB_USER else "create it or set run_as"
        raise JobUserError(f"run_as: no such user {run_as!r}; {hint}", exit_code=EX_NOUSER) from None
    if user.pw_uid == 0 and not allow_root_jobs:
        raise JobUserError(f"run_as={run_as!r} would run jobs as root, where they can read the agent's credentials "
                           "and leave their cgroup; use an unprivileged user (the default is "
                           f"{DEFAULT_JOB_USER!r}) or set allow_root_jobs = true to accept that")
    if user.pw_uid == euid:
        return JobUser(user.pw_name, user.pw_uid, user.pw_gid, switch=False)
    if euid != 0:
        raise JobUserError(f"run_as={run_as!r} needs the agent to run as root (it runs as uid {euid})",
                           exit_code=EX_NOPERM)
    if shutil.which("setpriv") is None:
        raise JobUserError("run_as needs setpriv (util-linux) on PATH", exit_code=EX_UNAVAILABLE)
    return JobUser(user.pw_name, user.pw_uid, user.pw_gid, switch=True)


def prepare_work_root(path: Path, user: JobUser) -> None:
    """Create the work root (ours, not a link, writable by no one else) with the least access
    the job user needs: traverse to its own dir, not list the others. Raises ``JobUserError``."""
    path.mkdir(parents=True, exist_ok=True)
    info = os.lstat(path)
    # Below a shared /tmp someone else could have made it first: refuse anything not ours.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise JobUserError(f"work dir {path} is not a directory owned by this agent's user; remove it or set work_dir")
    os.chmod(path, 0o711 if user.switch else 0o700)


def ensure_system_user(name: str) -> bool:
    """Create ``name`` as a system user without a home or login shell if it does not exist;
    return whether it was created. Raises ``JobUserError`` (not root, no useradd, refused)."""
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise JobUserError(f"user {name!r} does not exist, and creating it needs root: "
                           f"sudo useradd --system --no-create-home --shell /usr/sbin/nologin {name}")
    useradd = shutil.which("useradd")
    if useradd is None:
        raise JobUserError(f"user {name!r} does not exist and useradd is not on PATH; create it with your "
                           "system's tools")
    nologin = next((shell for shell in ("/usr/sbin/nologin", "/sbin/nologin") if Path(shell).exists()), "/bin/false")
    result = subprocess.run([useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", nologin,
                             "--user-group", name], capture_output=True, text=True, check=False)
    if result.returncode != 0 and result.returncode != 9:  # 9: created meanwhile by someone else
        raise JobUserError(f"useradd {name} failed: {result.stderr.strip() or result.returncode}")
    return True


# --- a uid of its own for each running job ----------------------------------------------------

def job_uid_range_for(user: JobUser, job_uid_range: str) -> tuple[int, int] | None:
    """The uids jobs get one each of, or None when every job runs as ``user`` itself: only a
    root agent's default job user is replaced (an explicit other ``run_as`` is the operator
    choosing to share one user; a non-root agent cannot switch)."""
    if not user.switch or user.name != DEFAULT_JOB_USER:
        return None
    return parse_uid_range(job_uid_range)


def pick_job_uid(uid_range: tuple[int, int], *, after: int, unusable: set[int]) -> int | None:
    """The first uid of ``uid_range`` after ``after`` (wrapping round) not in ``unusable``, or
    None when every one is. Round-robin rather than lowest-first, so a uid just released (whose
    files in /tmp or /dev/shm may outlive its job) is the last to be handed out again."""
    lo, hi = uid_range
    size = hi - lo + 1
    start = (after - lo + 1) % size if lo <= after <= hi else 0
    for step in range(size):
        uid = lo + (start + step) % size
        if uid not in unusable:
            return uid
    return None


def existing_ids() -> set[int]:
    """Every uid in the user database and every gid in the group one: a job uid (which is its
    own gid too) must be neither, or the job would be someone."""
    return {user.pw_uid for user in pwd.getpwall()} | {group.gr_gid for group in grp.getgrall()}


def uids_with_processes() -> set[int]:
    """The real, effective and saved uids of every process now: a uid still in use by a process
    (a job's leftover outside any cgroup, another agent's job) is not handed to a new job."""
    # Read from /proc directly: psutil builds an object per process and costs several times
    # more, and this runs for every job a root agent starts.
    busy: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as status:
                text = status.read()
        except OSError:  # gone meanwhile
            continue
        start = text.find(b"\nUid:")
        if start >= 0:  # real, effective, saved (then the file-system uid)
            busy.update(map(int, text[start + 5:text.find(b"\n", start + 5)].split()[:3]))
    return busy


class JobUids:
    """Which job holds which uid of the range. ``existing`` is what the user and group
    databases hold (read once at start: those uids are skipped)."""

    def __init__(self, uid_range: tuple[int, int], *, existing: set[int]) -> None:
        self.range = uid_range
        self._existing = existing
        self._held: dict[str, int] = {}
        self._last = uid_range[0] - 1

    @property
    def skipped(self) -> int:
        """How many uids of the range exist in the user or group database."""
        lo, hi = self.range
        return sum(1 for uid in self._existing if lo <= uid <= hi)

    @property
    def full(self) -> bool:
        """Every uid of the range that is no user or group is held by a running job."""
        lo, hi = self.range
        held = sum(1 for uid in set(self._held.values()) if lo <= uid <= hi and uid not in self._existing)
        return held >= hi - lo + 1 - self.skipped

    def allocate(self, job_id: str, *, busy: set[int]) -> int | None:
        """A uid for ``job_id`` that no user, group, held job or process has (``busy``: the
        uids processes run as now, ``uids_with_processes()``); None if the range has none left."""
        if job_id in self._held:
            return self._held[job_id]
        uid = pick_job_uid(self.range, after=self._last,
                           unusable=self._existing | set(self._held.values()) | busy)
        if uid is not None:
            self._held[job_id] = uid
            self._last = uid
        return uid

    def restore(self, job_id: str, uid: int) -> None:
        """A re-adopted job keeps the uid its record names (even one outside today's range)."""
        self._held[job_id] = uid

    def release(self, job_id: str) -> None:
        self._held.pop(job_id, None)

    def held(self, job_id: str) -> int | None:
        return self._held.get(job_id)
