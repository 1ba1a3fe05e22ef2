"""A fake cgroup2 filesystem in a temporary directory, honouring what the v2 backend relies
on: ``mkdir`` makes a group with its interface files, ``rmdir`` removes only an empty group,
writes to ``cgroup.procs`` move a pid (recorded, not enforced), and ``1`` written to
``cgroup.kill`` SIGKILLs the processes listed in the group and below it, which then leave it
(put only this test's own children there)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

from agentd.cgroups.base import CgroupFs

INTERFACE = {"cgroup.procs": "", "cgroup.controllers": "", "cgroup.subtree_control": "", "memory.events":
             "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n", "cpu.stat": "usage_usec 0\n", "memory.current": "0\n",
             "memory.peak": "0\n", "memory.stat": "anon 0\nfile 0\nactive_file 0\ninactive_file 0\n",
             "cgroup.kill": ""}


class FakeCgroup2Fs(CgroupFs):
    def __init__(self, root: Path, controllers: str = "cpuset cpu io memory pids") -> None:
        super().__init__(root)
        root.mkdir(parents=True, exist_ok=True)
        self._populate(root, controllers)

    @staticmethod
    def _populate(directory: Path, controllers: str) -> None:
        for name, text in INTERFACE.items():
            (directory / name).write_text(text)
        (directory / "cgroup.controllers").write_text(controllers)

    def mkdir(self, rel: str) -> None:
        path = self.path(rel)
        if path.exists():
            return
        parent = path.parent
        path.mkdir()
        self._populate(path, (parent / "cgroup.subtree_control").read_text().replace("+", ""))

    def write(self, rel: str, value: str) -> None:
        path = self.path(rel)
        if path.name == "cgroup.procs":
            for procs in self.root.rglob("cgroup.procs"):  # a pid is in exactly one group
                kept = [pid for pid in procs.read_text().split() if pid != value.strip()]
                procs.write_text("".join(f"{pid}\n" for pid in kept))
            path.write_text(path.read_text() + value.strip() + "\n")
            return
        if path.name == "cgroup.kill" and value.strip() == "1":
            for procs in path.parent.rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                procs.write_text("")
        if path.name == "cgroup.subtree_control":
            if path.parent.joinpath("cgroup.procs").read_text().strip():
                raise OSError(16, "Device or resource busy")  # no internal processes
            enabled = " ".join(word.lstrip("+") for word in value.split())
            path.write_text(enabled)
            return
        super().write(rel, value)

    def rmdir(self, rel: str) -> None:
        path = self.path(rel)
        if not path.exists():
            return
        if (path / "cgroup.procs").read_text().strip() or any(p.is_dir() for p in path.iterdir()):
            raise OSError(16, "Device or resource busy")
        shutil.rmtree(path)

    def children(self, rel: str) -> list[str]:
        path = self.path(rel)
        return sorted(e.name for e in os.scandir(path) if e.is_dir()) if path.exists() else []
