"""A simulated agent over real HTTP for in-process coordinators (``tests/inproc.py``): it
claims and reports events as agentd would, at the times of the test's injected clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from common.clock import ManualClock, to_rfc3339
from common.protocol import CapacityMsg, ClaimRequest, FinishedEvent, StartedEvent, UsageEvent
from common.states import JobState
from tests.inproc import InProcess

JSON = {"Content-Type": "application/json"}


@dataclass
class SimAgent:
    agent_id: str
    http: httpx.AsyncClient
    clock: ManualClock
    seq: int = 0

    @classmethod
    async def register(cls, co: InProcess, name: str = "sim") -> SimAgent:
        agent_id, http = await co.register_agent(name=name)
        return cls(agent_id, http, co.clock)

    async def claim(self, wait: float = 0) -> dict[str, Any] | None:
        """The assignment (jobId, epoch, ...), or None when the claim was answered 204."""
        body = ClaimRequest(free=CapacityMsg(cpus=4, memoryMb=8192, gpus=0), waitSeconds=wait).model_dump_json()
        response = await self.http.post("/agent/v0/claim", content=body, headers=JSON)
        if response.status_code == 204:
            return None
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    async def _send(self, *events: Any) -> None:
        body = "{\"events\": [" + ", ".join(event.model_dump_json() for event in events) + "]}"
        response = await self.http.post("/agent/v0/events", content=body, headers=JSON)
        assert response.status_code == 200, response.text
        assert response.json()["rejected"] == [], response.text

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    async def start(self, job_id: str, epoch: int) -> None:
        await self._send(StartedEvent(seq=self._next(), jobId=job_id, epoch=epoch, at=to_rfc3339(self.clock.now())))

    async def finish(self, job_id: str, epoch: int, outcome: JobState, exit_code: int | None) -> None:
        await self._send(FinishedEvent(seq=self._next(), jobId=job_id, epoch=epoch, at=to_rfc3339(self.clock.now()),
                                       state=outcome, exitCode=exit_code, runtimeMs=0))

    async def run(self, job_id: str, epoch: int, outcome: JobState, exit_code: int | None, *,
                  cpu_seconds: float = 0.0) -> None:
        """Start the job, report its usage, then its result, all at the clock's now."""
        await self.start(job_id, epoch)
        if cpu_seconds:
            await self._send(UsageEvent(seq=self._next(), jobId=job_id, epoch=epoch, cpuSeconds=cpu_seconds,
                                        gbSeconds=0, gpuSeconds=0))
        await self.finish(job_id, epoch, outcome, exit_code)

    async def aclose(self) -> None:
        await self.http.aclose()
