"""GPU assignment: which of the host's GPUs each job gets. Two jobs never share a GPU.

Pure bookkeeping over device indices (as NVML and ``CUDA_VISIBLE_DEVICES`` number them);
the executor turns an assignment into the job's environment and, on cgroup v1, into device
rules that deny the other GPUs.
"""

from __future__ import annotations

from collections.abc import Iterable

from agentd.cgroups.base import NVIDIA_MAJOR


class GpuAllocator:
    def __init__(self, indices: Iterable[int]) -> None:
        self._all = tuple(sorted(indices))
        self._held: dict[str, tuple[int, ...]] = {}

    @property
    def free(self) -> tuple[int, ...]:
        taken = {index for held in self._held.values() for index in held}
        return tuple(index for index in self._all if index not in taken)

    def allocate(self, job_id: str, count: int) -> tuple[int, ...] | None:
        """The lowest ``count`` free GPUs for ``job_id``, or None if that many are not free.

        Idempotent per job: asking again returns what the job already holds.
        """
        if job_id in self._held:
            return self._held[job_id]
        free = self.free
        if count > len(free):
            return None
        self._held[job_id] = free[:count]
        return self._held[job_id]

    def restore(self, job_id: str, indices: Iterable[int]) -> None:
        """Record what a re-adopted job already holds; raises ``ValueError`` on a clash."""
        wanted = tuple(sorted(indices))
        if any(index not in self.free for index in wanted):
            raise ValueError(f"GPUs {wanted} are not all free")
        self._held[job_id] = wanted

    def release(self, job_id: str) -> None:
        self._held.pop(job_id, None)

    def denied_devices(self, assigned: Iterable[int]) -> tuple[tuple[int, int], ...]:
        """Device numbers of the host's GPUs the job was not given (``/dev/nvidiaN`` is 195:N)."""
        mine = set(assigned)
        return tuple((NVIDIA_MAJOR, index) for index in self._all if index not in mine)
