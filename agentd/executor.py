"""Run one job in its own cgroup and report how it ended.

Lifecycle (one job)::

    cgroup created (limits) ─▶ workdir (owned by run_as) ─▶ spawn the entry wrapper
        wrapper: writes its pid to the cgroup's procs files, drops to run_as, runs
                 /bin/sh -c CMD with stdout+stderr into <state dir>/output, records the
                 exit status in <state dir>/status
          │  output file ─ tailed ─▶ on_output(bytes)            (in order, from any offset)
          │  meter ─ densely at first, then every interval ─▶ on_usage(Usage) (cumulative)
          │                                                 └▶ on_meter(MeterState) (to persist)
          ├─ exits ────────────────────────────────────────────▶ SUCCEEDED / FAILED (oom_killed)
          ├─ timeout ─▶ TERM to the cgroup, grace, KILL ───────▶ TIMED_OUT
          └─ cancel  ─▶ TERM to the cgroup, grace, KILL ───────▶ CANCELLED
    leftovers killed until the cgroup is empty ─▶ cgroup, workdir and state dir removed

Stopping (timeout, cancel): TERM goes to every process of the job; the wrapper survives it
(it traps TERM, which the job itself does not inherit) and the agent keeps supervising, output
included, until the group is empty or ``grace_seconds`` have passed; only then is what is left
KILLed. ``Outcome.signal`` says which it took (``TERM`` or ``KILL``); a job that died of a
signal of its own has its name there, and ``exit_code`` is 128 + n as a shell reports it.

The job never runs outside its cgroup: the wrapper joins it before it execs anything. The
job's processes are not the agent's pipes' readers and live in their own session, so they
survive the agent's death; a restarted agent re-adopts them with ``Launched`` (what the
daemon persisted) and ``adopt``. Without cgroups the process group stands in for the
cgroup and psutil for its counters.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import trio

from agentd.cgroups.base import CgroupError, CgroupManager, JobCgroup, Limits
from agentd.cgroups.none import NoCgroups
from agentd.fingerprint.gpu import GpuUnit
from agentd.gpus import gpu_environment
from agentd.metering import (
    Allocation,
    CgroupSource,
    GpuUtilisation,
    Meter,
    MeterState,
    ProcessTreeSource,
    Usage,
    UsageSource,
    sample_delay,
)
from common.clock import Clock, SystemClock
from common.models import ARRAY_ENV_NAMES, reserved_env_name
from common.states import JobState, result_state_for_exit

READ_CHUNK = 64 * 1024
# Output read per pass before the tail yields to the event loop: a job writing as fast as it
# can must not hold the loop (heartbeats, timeouts) for longer than one budget takes.
READ_BUDGET = 1024 * 1024
TAIL_INTERVAL = 0.1
EMPTY_POLL = 0.02
LEFTOVER_DEADLINE = 10.0
PERSIST_INTERVAL = 0.5
GPU_READ_INTERVAL = 0.5  # NVML (off the loop) is read at most this often, even while samples are dense
# Output already safe in the spool is given back to the file system in steps of this much.
FREE_STEP = 1024 * 1024
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

# $1 command, $2 status file, $3 how many procs files follow; then the procs files, then the
# privilege-dropping prefix (empty, or setpriv ... --). The wrapper joins the cgroup before it
# runs anything, and re-raises the job's fatal signal so the agent sees the same wait status.
# The wrapper traps TERM (a trap with a handler is reset to the default in the job it starts,
# unlike an ignored signal) so that it outlives a TERM meant for the job and still records the
# job's exit status while the job cleans up. The status is written in place (a builtin; no
# rename, which would cost a process of its own per job): it is read only once the wrapper is
# gone, and a wrapper killed mid-write leaves an empty file, which reads as no status at all.
_WRAPPER = r"""trap : TERM
cmd=$1; status=$2; n=$3; shift 3
while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n - 1)); done
"$@" /bin/sh -c "$cmd"
st=$?
echo "$st" > "$status"
if [ "$st" -gt 128 ] && [ "$st" -lt 160 ]; then trap - $((st - 128)); kill -$((st - 128)) $$; fi
exit "$st"
"""


@dataclass(frozen=True)
class RunAs:
    """The unprivileged user jobs run as (when it differs from the agent's). ``init_groups``:
    take the user's supplementary groups from the group database (a named ``run_as``); a job
    uid of its own (job_user.JobUids) is in no database and gets no supplementary groups."""

    uid: int
    gid: int
    init_groups: bool = True


@dataclass(frozen=True)
class ExecSpec:
    job_id: str
    command: str
    env: Mapping[str, str]
    timeout_seconds: float
    workdir: Path
    grace_seconds: float = 10.0
    limits: Limits = field(default_factory=Limits)
    run_as: RunAs | None = None
    gpus: tuple[GpuUnit, ...] = ()
    # On a host with GPUs, a job is told exactly which it has, none included.
    host_has_gpus: bool = False
    # Agent-owned: the output and exit-status files. Default: next to the workdir.
    state_dir: Path | None = None
    meter_interval: float = 1.0

    @property
    def allocation(self) -> Allocation:
        return Allocation(gpus=len(self.gpus), cpus=self.limits.cpus, memory_bytes=self.limits.memory_bytes)

    @property
    def job_state_dir(self) -> Path:
        return self.state_dir or self.workdir.with_name(self.workdir.name + ".state")


@dataclass(frozen=True)
class Launched:
    """What a restarted agent needs to find a running job again (persisted by the daemon)."""

    pid: int
    pid_started: float  # psutil create_time, so a recycled pid is not taken for the job
    cgroup: str | None
    started_wall: float  # epoch seconds, for the remaining timeout

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Launched:
        return cls(int(data["pid"]), float(data["pid_started"]), data.get("cgroup"), float(data["started_wall"]))


@dataclass(frozen=True)
class Outcome:
    state: JobState
    exit_code: int | None
    reason: str | None
    started_at: datetime
    finished_at: datetime
    runtime_ms: int
    usage: Usage = field(default_factory=Usage)
    # The signal that ended the job: TERM or KILL when the agent stopped it, else its own fatal one.
    signal: str | None = None
    # time.monotonic() when the wrapper was spawned and when its exit was seen (None: not by this
    # process), for the agent's own per-job timings.
    spawned: float | None = None
    exited: float | None = None


def job_environment(spec: ExecSpec) -> dict[str, str]:
    """A clean environment: PATH, HOME (the job's workdir), the job's own env, its id, its GPUs.

    The GPU variables come last, so a job's own env cannot widen what it was given. Of the
    reserved names only an array task's (``ARRAY_ENV_NAMES``) pass: the coordinator sets them,
    and refuses them in a submitted env."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": str(spec.workdir),
           **{name: value for name, value in spec.env.items()
              if name in ARRAY_ENV_NAMES or reserved_env_name({name: value}) is None}}
    # Set last, so that no job env (the coordinator refuses these at submit) can widen them.
    env["TANVRIT_JOB_ID"] = spec.job_id
    env.update(gpu_environment(spec.gpus, host_has_gpus=spec.host_has_gpus or bool(spec.gpus)))
    return env


def _wrapper_argv(spec: ExecSpec, cgroup: JobCgroup, status: Path) -> list[str]:
    procs = [str(path) for path in cgroup.procs_files]
    drop: list[str] = []
    if spec.run_as is not None:
        groups = "--init-groups" if spec.run_as.init_groups else "--clear-groups"
        drop = ["setpriv", f"--reuid={spec.run_as.uid}", f"--regid={spec.run_as.gid}", groups, "--"]
    return ["/bin/sh", "-c", _WRAPPER, "tanvrit-job", spec.command, str(status), str(len(procs)), *procs, *drop]


class _Group:
    """Signals and emptiness for a job: its cgroup, or its process group without one."""

    def __init__(self, cgroup: JobCgroup, pgid: int, isolated: bool) -> None:
        self.cgroup = cgroup
        self._pgid = pgid
        self._isolated = isolated

    def signal(self, signum: int) -> None:
        if self._isolated:
            self.cgroup.signal(signum)
        # The process group as well: cheap, and covers the wrapper before it joined.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pgid, signum)

    def pids(self) -> list[int]:
        """The job's processes now (for matching NVML's per-process GPU figures)."""
        if self._isolated:
            return self.cgroup.pids()
        try:
            root = psutil.Process(self._pgid)
            return [root.pid, *(child.pid for child in root.children(recursive=True))]
        except psutil.Error:
            return []

    def empty(self) -> bool:
        if self._isolated:
            return not self.cgroup.pids()
        try:
            os.killpg(self._pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        # Zombies of the group keep it "alive" for kill(0); they are not running anything.
        return all(_is_zombie(p) for p in psutil.process_iter(["pid"]) if _pgid_of(p.pid) == self._pgid)

    async def wait_empty(self, within: float) -> bool:
        # Polled: v1 has no emptiness notification we could wait on.
        with trio.move_on_after(within):
            while True:
                if self.empty():
                    return True
                await trio.sleep(EMPTY_POLL)
        return False

    async def kill_all(self) -> bool:
        """SIGKILL until nothing is left (a fork racing the kill gets the next round); return
        whether anything was left to kill."""
        deadline = trio.current_time() + LEFTOVER_DEADLINE
        killed = False
        while not self.empty() and trio.current_time() < deadline:
            self.signal(signal.SIGKILL)
            killed = True
            await trio.sleep(EMPTY_POLL)
        return killed


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _is_zombie(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class _Tail:
    """Reads what the job wrote to its output file since ``offset``, a bounded amount per pass.

    ``pace`` (optional) is awaited after every pass: the consumer's back-pressure (the agent's
    spool queue), so a job that writes faster than the spool can store waits in its own file,
    not in the agent's memory."""

    def __init__(self, path: Path, offset: int, on_output: Callable[[bytes], None],
                 pace: Callable[[], Awaitable[None]] | None = None, freeable: Callable[[], int] | None = None,
                 on_skip: Callable[[int], None] | None = None) -> None:
        # Read and write: the write side only punches holes where output already delivered was.
        self._fd = os.open(path, os.O_RDWR if freeable is not None else os.O_RDONLY)
        os.lseek(self._fd, offset, os.SEEK_SET)
        self._on_output = on_output
        self._pace = pace
        self._freeable = freeable
        self._freed = 0
        self._on_skip = on_skip

    def read_some(self, budget: int = READ_BUDGET) -> bool:
        """Deliver up to ``budget`` bytes; True if it stopped at the budget (more may wait)."""
        read = 0
        while read < budget:
            self._skip_holes()
            chunk = os.read(self._fd, min(READ_CHUNK, budget - read))
            if not chunk:
                return False
            read += len(chunk)
            self._on_output(chunk)
        return True

    def _skip_holes(self) -> None:
        """Step over a hole at the read position. The job writes with O_APPEND, so a hole is
        never output: it is a job extending its own stdout (``ftruncate``), which would make the
        agent read, spool and ship gigabytes of zeros the job never had to write."""
        position = os.lseek(self._fd, 0, os.SEEK_CUR)
        size = os.fstat(self._fd).st_size  # before SEEK_DATA: output appended after it is data
        try:
            data = os.lseek(self._fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                os.lseek(self._fd, position, os.SEEK_SET)  # no hole support: every byte is data
                return
            data = max(position, size)  # nothing but hole from here to (at least) ``size``
            os.lseek(self._fd, data, os.SEEK_SET)
        if data > position and self._on_skip is not None:
            self._on_skip(data - position)

    async def drain(self) -> None:
        """Deliver everything written so far, yielding to the event loop between passes."""
        while self.read_some():
            await self._yield()
        await self._yield()

    async def follow(self) -> None:
        """Deliver output as it is written, until cancelled."""
        while True:
            more = self.read_some()
            await self._yield()
            if not more:
                await trio.sleep(TAIL_INTERVAL)

    async def _yield(self) -> None:
        if self._pace is not None:
            await self._pace()
        self._free()
        await trio.lowlevel.checkpoint()

    def _free(self) -> None:
        """Give back the disk blocks of the output below ``freeable()`` (what the consumer has
        made durable: a restarted agent reads on from there): the output file lives in the
        agent's data dir, and a job writing for days must not fill the disk that holds the
        agent's credentials and spool. Offsets stay (a hole reads as zeros, and is never read)."""
        if self._freeable is None:
            return
        upto = self._freeable()
        if upto - self._freed >= FREE_STEP:
            _punch_hole(self._fd, upto)
            self._freed = upto

    def close(self) -> None:
        os.close(self._fd)


def _punch_hole(fd: int, length: int) -> None:
    """Deallocate the first ``length`` bytes of ``fd``'s file, keeping its size. Best effort:
    where the file system cannot (or libc has no ``fallocate``), the blocks stay."""
    try:
        fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return
    fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(length))


async def _remove_dirs(*directories: Path, then: Callable[[], None] | None = None) -> None:
    """Remove a job's directories in a worker thread: a job can leave millions of files, and
    the event loop must not wait on the disk for them (even two files and their directory take
    milliseconds on a busy disk). ``then``: more blocking work for the same thread afterwards."""

    def remove() -> None:
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)
        if then is not None:
            then()

    await trio.to_thread.run_sync(remove)


async def remove_job_dirs(spec: ExecSpec, *, then: Callable[[], None] | None = None) -> None:
    """Remove the job's work dir and state dir: after ``execute`` or ``adopt`` with
    ``leave_dirs``, once the caller has reported the outcome; then run ``then`` (blocking, in
    the same worker thread: one hand-off to a thread instead of two)."""
    await _remove_dirs(spec.workdir, spec.job_state_dir, then=then)


def _status_time(state_dir: Path) -> float | None:
    """When the wrapper recorded the job's exit status (epoch seconds), or None."""
    try:
        return (state_dir / "status").stat().st_mtime
    except OSError:
        return None


def _read_status(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "status").read_text().strip())
    except (OSError, ValueError):
        return None


async def execute(
    spec: ExecSpec,
    on_output: Callable[[bytes], None],
    cancel: trio.Event,
    *,
    clock: Clock | None = None,
    on_started: Callable[[datetime], None] | None = None,
    cgroups: CgroupManager | None = None,
    on_launched: Callable[[Launched], None] | None = None,
    on_usage: Callable[[Usage], None] | None = None,
    gpu_util: GpuUtilisation | None = None,
    pace: Callable[[], Awaitable[None]] | None = None,
    on_meter: Callable[[MeterState], None] | None = None,
    freeable: Callable[[], int] | None = None,
    on_skip: Callable[[int], None] | None = None,
    leave_dirs: bool = False,
) -> Outcome:
    """Run ``spec`` to its end; never raises for the job's own failures. ``pace`` is awaited
    between output reads (back-pressure from whatever ``on_output`` feeds); ``freeable`` says
    up to which output offset what ``on_output`` got is durable elsewhere, so that the output
    file's disk space below it can be given back; ``on_skip(n)``: n bytes of the output file
    were a hole the job made, not output (offsets count them, ``on_output`` never sees them).
    ``leave_dirs``: the work dir and state dir are left for the caller to remove
    (``remove_job_dirs``) once it has reported the outcome, which then does not wait for the disk."""
    clock = clock or SystemClock()
    cgroups = cgroups or NoCgroups()
    started_at = clock.now()
    begin = time.monotonic()
    begin_wall = time.time()
    state_dir = spec.job_state_dir

    def failed_start(message: str) -> Outcome:
        on_output(f"tanvrit-agentd: could not start the job: {message}\n".encode())
        return Outcome(JobState.FAILED, None, "start_failed", started_at, clock.now(), 0)

    try:
        cgroup = cgroups.create(spec.job_id, spec.limits)
    except CgroupError as exc:
        return failed_start(str(exc))
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        spec.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if spec.run_as is not None:
            os.chown(spec.workdir, spec.run_as.uid, spec.run_as.gid)
        output = state_dir / "output"
        sink = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = _Child.spawn(
                _wrapper_argv(spec, cgroup, state_dir / "status"), stdout=sink, cwd=spec.workdir,
                env=job_environment(spec),
            )
            spawned = time.monotonic()
        finally:
            os.close(sink)
    except OSError as exc:
        cgroup.remove()
        await _remove_dirs(spec.workdir, state_dir)
        return failed_start(str(exc))
    launched = Launched(process.pid, _create_time(process.pid), cgroup.name if cgroups.kind != "none" else None,
                        time.time())
    if on_launched is not None:
        on_launched(launched)
    if on_started is not None:
        on_started(started_at)

    async def wait_process() -> int | None:
        return await process.wait()

    try:
        return await _supervise(spec, cgroups.kind != "none", cgroup, launched, wait_process, on_output, cancel,
                                clock=clock, started_at=started_at, begin=begin, offset=0,
                                meter=MeterState(Usage(), begin_wall, begin_wall, None, None), resumed=False,
                                on_usage=on_usage, gpu_util=gpu_util, on_meter=on_meter, pace=pace,
                                freeable=freeable, on_skip=on_skip, spawned=spawned, leave_dirs=leave_dirs)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await process.wait()


class _Child:
    """The job's wrapper process, spawned on the event loop itself.

    ``trio.lowlevel.open_process`` runs ``Popen`` in a worker thread; handing the result back
    to the loop waits for the GIL, which the loop holds while it sends the next claim and
    ships the job's first events, so that hop measured 7 ms (p50) of the 8 between a claim's
    answer and the spawn in ``bench/e2e.py``. ``Popen`` itself is short here: no
    ``preexec_fn``, user or groups, so CPython spawns with ``vfork`` and the loop waits only
    until the child has exec'd ``/bin/sh``. The exit is awaited on a pidfd (Linux 5.3+), or
    else with ``waitid`` in a worker thread, as trio does. ``Popen``'s defaults stand: file
    descriptors closed, SIGPIPE/SIGXFSZ restored to their defaults (exec resets the rest of
    the agent's handlers)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(popen.pid)

    @classmethod
    def spawn(cls, argv: list[str], *, stdout: int, cwd: Path, env: Mapping[str, str]) -> _Child:
        """Start ``argv`` in a new session, stdin from /dev/null, stdout and stderr to ``stdout``."""
        return cls(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                                    cwd=cwd, env=env, start_new_session=True))

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        """Wait for the exit and reap it: its status as ``Popen.returncode`` has it."""
        if self._popen.returncode is None:
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
            else:
                await trio.to_thread.run_sync(_wait_reapable, self.pid, abandon_on_cancel=True)
            self._popen.wait()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        return self._popen.wait()


def _wait_reapable(pid: int) -> None:
    """Block until child ``pid`` has exited, without reaping it (``Popen.wait`` does)."""
    while True:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def alive(launched: Launched) -> bool:
    """Whether the job's wrapper process from a previous agent still runs (not a recycled pid)."""
    try:
        process = psutil.Process(launched.pid)
        return process.create_time() == launched.pid_started and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def adopt(
    spec: ExecSpec,
    launched: Launched,
    on_output: Callable[[bytes], None],
    cancel: trio.Event,
    *,
    offset: int,
    usage: Usage | None,
    started_at: datetime,
    clock: Clock | None = None,
    cgroups: CgroupManager | None = None,
    on_usage: Callable[[Usage], None] | None = None,
    gpu_util: GpuUtilisation | None = None,
    pace: Callable[[], Awaitable[None]] | None = None,
    meter: MeterState | None = None,
    on_meter: Callable[[MeterState], None] | None = None,
    freeable: Callable[[], int] | None = None,
    on_skip: Callable[[int], None] | None = None,
    leave_dirs: bool = False,
) -> Outcome:
    """Supervise a job a previous agent process started, from output ``offset`` on.

    ``meter`` is the meter's state the previous process persisted last; without it (an older
    agent's record) metering goes on from ``usage`` (the last reported figures) from now.
    ``leave_dirs`` as for ``execute``."""
    clock = clock or SystemClock()
    cgroups = cgroups or NoCgroups()
    found = cgroups.open(launched.cgroup) if launched.cgroup else None
    cgroup = found or NoCgroups().create(spec.job_id, spec.limits)
    begin = time.monotonic() - max(0.0, time.time() - launched.started_wall)

    async def wait_adopted() -> int | None:
        # Not our child: poll until it is gone, then read the status its wrapper left.
        while True:
            if not alive(launched):
                return None
            await trio.sleep(TAIL_INTERVAL * 5)

    isolated = launched.cgroup is not None and cgroups.kind != "none"
    if meter is None:
        # A record from an agent before meter state was persisted: when its last usage was
        # measured is unknown, so the time away is not billed twice (GPU-seconds still are
        # exact: they run from the job's start).
        meter = MeterState(usage or Usage(), launched.started_wall, time.time(), None, None)
    return await _supervise(spec, isolated, cgroup, launched, wait_adopted, on_output, cancel, clock=clock,
                            started_at=started_at, begin=begin, offset=offset, meter=meter, resumed=True,
                            on_usage=on_usage, gpu_util=gpu_util, on_meter=on_meter, pace=pace, freeable=freeable,
                            on_skip=on_skip, leave_dirs=leave_dirs)


async def _supervise(
    spec: ExecSpec, isolated: bool, cgroup: JobCgroup, launched: Launched,
    wait_process: Callable[[], Any], on_output: Callable[[bytes], None], cancel: trio.Event, *,
    clock: Clock, started_at: datetime, begin: float, offset: int, meter: MeterState, resumed: bool,
    on_usage: Callable[[Usage], None] | None, gpu_util: GpuUtilisation | None,
    on_meter: Callable[[MeterState], None] | None,
    pace: Callable[[], Awaitable[None]] | None = None,
    freeable: Callable[[], int] | None = None,
    on_skip: Callable[[int], None] | None = None,
    spawned: float | None = None,
    leave_dirs: bool = False,
) -> Outcome:
    state_dir = spec.job_state_dir
    group = _Group(cgroup, launched.pid, isolated)
    source: UsageSource = CgroupSource(cgroup) if isolated else ProcessTreeSource(launched.pid)
    metering = Meter(source, allocation=spec.allocation, start=meter.started, resume=meter if resumed else None,
                     gpu_util=gpu_util)
    persisted_at = -1.0
    ended = False

    def take_sample(*, final: bool = False) -> Usage:
        nonlocal persisted_at, ended
        if ended:
            return metering.usage  # nothing is billed past the job's end
        if not final and _status_time(state_dir) is not None:
            # The job has ended and its exit is not yet seen (an adopted job's is polled): a sample
            # now would bill the time since its end. The final sample bills up to the end itself.
            return metering.usage
        ended = final
        now = time.time()
        if final:
            # The job ended when its wrapper recorded the status (maybe while the agent was down).
            now = min(now, max(_status_time(state_dir) or now, metering.state.at))
        usage_now = metering.sample(now, final=final)
        # Persisted at most every PERSIST_INTERVAL: the dense early samples are not worth an
        # fsync each; a restart bills the unpersisted stretch from the cgroup's peak.
        if on_meter is not None and (final or now - persisted_at >= PERSIST_INTERVAL):
            persisted_at = now
            on_meter(metering.state)
        return usage_now

    alive_at_start = resumed and not alive(launched)
    # The first sample: at the start of a new job; for an adopted one, what it used while the
    # agent was away (up to its exit, if it already ended).
    final = take_sample(final=alive_at_start)
    tail = _Tail(state_dir / "output", offset, on_output, pace, freeable, on_skip)
    stop_reason: JobState | None = None
    stop_signal: str | None = None
    stopped = trio.Event()
    returncode: int | None = None
    exited: float | None = None

    async def stop(reason: JobState) -> None:
        """TERM, then supervise on (output, metering) until the group is empty or the grace has
        passed; only then KILL what is left."""
        nonlocal stop_reason, stop_signal
        stop_reason, stop_signal = reason, "TERM"
        group.signal(signal.SIGTERM)
        if not await group.wait_empty(spec.grace_seconds) and await group.kill_all():
            stop_signal = "KILL"
        stopped.set()

    async def watch() -> None:
        elapsed = time.monotonic() - begin
        reason = JobState.TIMED_OUT
        with trio.move_on_after(max(0.0, spec.timeout_seconds - elapsed)):
            await cancel.wait()
            reason = JobState.CANCELLED
        # Outside the timeout's scope: a deadline passing during a cancel's grace cuts nothing short.
        await stop(reason)

    async def measure() -> None:
        gpu_read_at = -GPU_READ_INTERVAL
        while True:
            await trio.sleep(sample_delay(time.time() - meter.started, spec.meter_interval))
            if gpu_util is not None and time.monotonic() - gpu_read_at >= GPU_READ_INTERVAL:
                gpu_read_at = time.monotonic()
                await gpu_util.refresh(group.pids())  # off the loop, bounded: a hung driver waits here only
            usage_now = take_sample()
            if on_usage is not None:
                on_usage(usage_now)

    try:
        async with trio.open_nursery() as nursery:
            watcher = trio.CancelScope()

            async def watch_until_done() -> None:
                with watcher:
                    await watch()

            nursery.start_soon(watch_until_done)
            nursery.start_soon(tail.follow)
            nursery.start_soon(measure)
            returncode = await wait_process()
            exited = time.monotonic()
            if stop_reason is None:
                # It ended by itself: no stop may start now, and whatever it left behind in the
                # group (a daemonised grandchild) goes at once.
                watcher.cancel()
                await group.kill_all()
            else:
                # Stopping: its main process is gone, but the rest of the job may still be
                # cleaning up inside the grace.
                await stopped.wait()
            nursery.cancel_scope.cancel()
        await tail.drain()
        if not alive_at_start:
            # Last, after every await of the job's end (the group is empty, so the counters are
            # final, and the sample bills up to the recorded exit whenever it is taken): what
            # ``on_meter`` persists now is queued with the result the caller queues next, one
            # spool commit for both, instead of a commit of its own that the result's then waited
            # behind (2.7 ms p50 in bench/e2e.py).
            final = take_sample(final=True)
    finally:
        tail.close()
        with trio.CancelScope(shield=True):
            if not group.empty():
                await group.kill_all()
        oom = cgroup.oom_killed()
        cgroup.remove()
        status = _read_status(state_dir)
        if not leave_dirs:
            with trio.CancelScope(shield=True):
                await _remove_dirs(spec.workdir, state_dir)
    finished_at = clock.now()
    runtime_ms = int((time.monotonic() - begin) * 1000)
    if on_usage is not None:
        on_usage(final)
    code = returncode if returncode is not None else status
    # As a shell reports it: 128 + n for a job killed by signal n.
    exit_code = 128 - code if code is not None and code < 0 else code
    fatal = _signal_name(-code) if code is not None and code < 0 else None
    if stop_reason is not None:
        return Outcome(stop_reason, exit_code, stop_reason.value.lower(), started_at, finished_at, runtime_ms, final,
                       signal=stop_signal, spawned=spawned, exited=exited)
    if oom:
        return Outcome(JobState.FAILED, exit_code, "oom_killed", started_at, finished_at, runtime_ms, final,
                       signal=fatal, spawned=spawned, exited=exited)
    if code is None:
        return Outcome(JobState.FAILED, None, "agent_restarted", started_at, finished_at, runtime_ms, final,
                       spawned=spawned, exited=exited)
    if code < 0:
        return Outcome(JobState.FAILED, exit_code, f"killed_by_signal_{-code}", started_at, finished_at, runtime_ms,
                       final, signal=fatal, spawned=spawned, exited=exited)
    return Outcome(result_state_for_exit(code), code, None, started_at, finished_at, runtime_ms, final,
                   spawned=spawned, exited=exited)


def _signal_name(signum: int) -> str:
    """``TERM`` for 15: the name without its SIG prefix, as the API reports it."""
    try:
        return signal.Signals(signum).name.removeprefix("SIG")
    except ValueError:
        return str(signum)
