"""Wake-ups without polling: a waiting agent or log follower sleeps on an event that the
write path fires. Capture the event *before* looking at the store, then wait on it, so a
change that lands between the look and the wait is never missed.

Firing never blocks and never waits for a waiter: a slow log follower (one whose client
reads slowly) holds up only its own response, never the agent's event POST that woke it.

Three kinds of signal:

- work in a workspace: wakes agents long-polling ``/claim``;
- news about a job: wakes its log followers (kept only while someone follows the job);
- orders for an agent (cancel a job, drain, resume, deleted): wakes its held heartbeat, so a
  cancel reaches a running job at once instead of at the agent's next heartbeat. Cancelled
  job ids wait in ``pending_cancels`` until a heartbeat answer carries them; the store stays
  the source of truth (a lost answer is repaired by the next heartbeat's own reading).

A submission wakes one claim, not all (issue 15): each claim long-poll registers what it can
take (``waiting_claim``: the agent's labels, the free capacity and defaults it claims with), and
``job_submitted`` wakes the claim that has waited longest among those that can run the new job
and are not already woken; the others sleep on. That wake is followed through, so that a job
is never left queued while a claim that could take it sleeps:

- the woken claim takes the job: done;
- it takes another one (say, a higher priority that arrived meanwhile) or ends without trying
  (the client left, a newer claim replaced it): the wake passes to the next claim that can
  take the job and has not had it yet;
- it finds nothing: the job was taken by another claim, or nobody can take it now (its
  dependencies, a backoff, a hold); whatever later makes it claimable wakes every claim, as
  before (``work_arrived``).

Every other kind of news about work (a job handed back or requeued, a hold lifted, an array
slot freed, a message from another replica) still wakes every claim of the workspace.

Across replicas (coordinator/bus.py): each firing is also published on the cluster's bus
(PostgreSQL ``NOTIFY``) as a short message; the other replicas apply it to their own signals
(``apply``), so an agent long-polling replica A wakes when work is submitted on replica B. A
lone process (SQLite) has no bus: firing is in-process only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from coordinator import scheduler


class Signal:
    def __init__(self) -> None:
        self._event = trio.Event()

    def snapshot(self) -> trio.Event:
        return self._event

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()


@dataclass(frozen=True)
class Wake:
    """A new job that woke a claim: the claims that had it already (``tried``, by identity)."""

    workspace_id: str
    job_id: str
    labels: Mapping[str, str]
    resources: Mapping[str, Any] | None
    tried: frozenset[int] = frozenset()


@dataclass(eq=False)
class WaitingClaim:
    """A claim long-poll and what it can take. ``woken`` is set when a job is meant for it;
    ``wakes`` are the jobs it was woken for and has not settled yet."""

    agent_labels: Mapping[str, str]
    free: Mapping[str, Any]
    defaults: Mapping[str, Any] | None
    woken: trio.Event = field(default_factory=trio.Event)
    wakes: list[Wake] = field(default_factory=list)

    def can_take(self, wake: Wake) -> bool:
        return (scheduler.labels_match(wake.labels, self.agent_labels)
                and scheduler.fits(scheduler.effective_demand(wake.resources, self.defaults), self.free))

    def begin_pass(self) -> list[Wake]:
        """Call before each look at the store: the wakes that look settles. A wake that arrives
        during the look stays for the next one (``woken`` is then set, so the wait returns)."""
        if not self.wakes:
            self.woken = trio.Event()
        return list(self.wakes)


MAX_PENDING_CANCELS = 1024

# Bus messages: a kind letter, a space, its arguments separated by spaces (ids have none).
WORK, JOB, CANCEL, AGENT, CLAIMS, FORGET = "w", "j", "c", "a", "e", "f"


class Notifier:
    """Signals for 'new work in a workspace' and 'news about a job' (log, state).

    ``publish``, when given, is called with a bus message for every firing, so other replicas
    can ``apply`` it; it must not block."""

    def __init__(self, publish: Callable[[str], None] | None = None) -> None:
        self._publish = publish
        self._work: dict[str, Signal] = {}
        self._jobs: dict[str, tuple[Signal, int]] = {}
        self._agents: dict[str, Signal] = {}
        self._claims: dict[str, Signal] = {}
        # Per agent, job ids in the order cancelled (a dict as an ordered set), at most
        # MAX_PENDING_CANCELS: with several replicas, cancels reach every replica, and one that
        # never holds the agent's heartbeat would otherwise keep them all.
        self._pending_cancels: dict[str, dict[str, None]] = {}
        self._waiting: dict[str, list[WaitingClaim]] = {}
        self.targeted_wakes = 0  # for tests and benchmarks: claims woken for one job

    def work_signal(self, workspace_id: str) -> Signal:
        return self._work.setdefault(workspace_id, Signal())

    def work_arrived(self, workspace_id: str) -> None:
        self._fire_work(workspace_id)
        self._send(WORK, workspace_id)

    def _fire_work(self, workspace_id: str) -> None:
        signal = self._work.get(workspace_id)
        if signal is not None:
            signal.fire()

    # --- one new job, one claim -------------------------------------------------------
    @contextmanager
    def waiting_claim(self, workspace_id: str, claim: WaitingClaim) -> Iterator[WaitingClaim]:
        """Register a claim long-poll for targeted wake-ups while the block runs; the wakes it
        leaves unsettled pass on to other claims."""
        waiting = self._waiting.setdefault(workspace_id, [])
        waiting.append(claim)
        try:
            yield claim
        finally:
            waiting.remove(claim)
            if not waiting:
                del self._waiting[workspace_id]
            unsettled, claim.wakes = claim.wakes, []
            for wake in unsettled:
                self._wake_one(wake, passed_from=claim)

    def job_submitted(self, workspace_id: str, job_id: str, labels: Mapping[str, str],
                      resources: Mapping[str, Any] | None) -> None:
        """A new QUEUED job: wake one waiting claim that can take it (see the module docstring);
        other replicas, which do not know their claims' shapes here, wake theirs."""
        self._wake_one(Wake(workspace_id, job_id, labels, resources))
        self._send(WORK, workspace_id)

    def waiting_claims(self, workspace_id: str) -> int:
        """Claim long-polls registered in the workspace now."""
        return len(self._waiting.get(workspace_id, ()))

    def settle(self, claim: WaitingClaim, looked: list[Wake], taken: str | None) -> None:
        """After a claim's look at the store (``looked``: what ``begin_pass`` returned; ``taken``:
        the job it got, None for nothing). When it got another job than one it was woken for,
        that wake passes on; a look that found nothing settles them (see the module docstring)."""
        claim.wakes = [wake for wake in claim.wakes if wake not in looked]
        if taken is None:
            return
        for wake in looked:
            if wake.job_id != taken:
                self._wake_one(wake, passed_from=claim)

    def _wake_one(self, wake: Wake, *, passed_from: WaitingClaim | None = None) -> None:
        tried = wake.tried | ({id(passed_from)} if passed_from is not None else set())
        candidates = [claim for claim in self._waiting.get(wake.workspace_id, ())
                      if id(claim) not in tried and claim.can_take(wake)]
        if not candidates:
            return
        # The longest-waiting claim with nothing to settle yet; else the longest-waiting one.
        chosen = next((claim for claim in candidates if not claim.wakes), candidates[0])
        chosen.wakes.append(Wake(wake.workspace_id, wake.job_id, wake.labels, wake.resources,
                                 frozenset(tried | {id(chosen)})))
        chosen.woken.set()
        self.targeted_wakes += 1

    @contextmanager
    def watch_job(self, job_id: str) -> Iterator[Signal]:
        """A signal for one job, kept only while someone watches it."""
        signal, watchers = self._jobs.get(job_id, (Signal(), 0))
        self._jobs[job_id] = (signal, watchers + 1)
        try:
            yield signal
        finally:
            signal, watchers = self._jobs[job_id]
            if watchers == 1:
                del self._jobs[job_id]
            else:
                self._jobs[job_id] = (signal, watchers - 1)

    def job_changed(self, job_id: str) -> None:
        self._fire_job(job_id)
        self._send(JOB, job_id)

    def _fire_job(self, job_id: str) -> None:
        entry = self._jobs.get(job_id)
        if entry is not None:
            entry[0].fire()

    @property
    def watched_jobs(self) -> int:
        return len(self._jobs)

    # --- orders for one agent -----------------------------------------------------------
    def agent_signal(self, agent_id: str) -> Signal:
        return self._agents.setdefault(agent_id, Signal())

    def order_cancel(self, agent_id: str, job_id: str) -> None:
        """Tell the agent's held heartbeat, if any, to stop ``job_id`` now."""
        self._cancel(agent_id, job_id)
        self._send(CANCEL, agent_id, job_id)

    def _cancel(self, agent_id: str, job_id: str) -> None:
        pending = self._pending_cancels.setdefault(agent_id, {})
        pending[job_id] = None
        if len(pending) > MAX_PENDING_CANCELS:
            # The oldest goes: a cancel not carried by an answer is still in the store, and the
            # agent's next heartbeat reads it there.
            del pending[next(iter(pending))]
        self.agent_signal(agent_id).fire()

    def agent_changed(self, agent_id: str) -> None:
        """Its drain flag changed or it was deleted: wake its held heartbeat."""
        self.agent_signal(agent_id).fire()
        self._send(AGENT, agent_id)

    def claim_signal(self, agent_id: str) -> Signal:
        """Fired when the agent's waiting claims should end: a newer claim of its own replaces
        them (its free capacity grew), or it is stopping."""
        return self._claims.setdefault(agent_id, Signal())

    def end_waiting_claims(self, agent_id: str) -> None:
        self.claim_signal(agent_id).fire()
        self._send(CLAIMS, agent_id)

    def has_pending_cancels(self, agent_id: str) -> bool:
        return bool(self._pending_cancels.get(agent_id))

    def take_pending_cancels(self, agent_id: str) -> set[str]:
        return set(self._pending_cancels.pop(agent_id, {}))

    def forget_agent(self, agent_id: str) -> None:
        self._forget(agent_id)
        self._send(FORGET, agent_id)

    def _forget(self, agent_id: str) -> None:
        self._pending_cancels.pop(agent_id, None)
        for signals in (self._agents, self._claims):
            signal = signals.pop(agent_id, None)
            if signal is not None:
                signal.fire()

    # --- the bus between replicas -------------------------------------------------------
    def _send(self, kind: str, *args: str) -> None:
        if self._publish is not None:
            self._publish(" ".join((kind, *args)))

    def apply(self, message: str) -> None:
        """Fire what another replica's message names, here only (never published again).
        An unknown or malformed message (a newer replica's) is ignored."""
        kind, *args = message.split(" ")
        if kind == WORK and len(args) == 1:
            self._fire_work(args[0])
        elif kind == JOB and len(args) == 1:
            self._fire_job(args[0])
        elif kind == CANCEL and len(args) == 2:
            self._cancel(args[0], args[1])
        elif kind == AGENT and len(args) == 1:
            self.agent_signal(args[0]).fire()
        elif kind == CLAIMS and len(args) == 1:
            self.claim_signal(args[0]).fire()
        elif kind == FORGET and len(args) == 1:
            self._forget(args[0])

    def wake_all(self) -> None:
        """Wake every waiter here, to read the store afresh: messages may have been missed
        (the bus reconnected)."""
        for signal in [*self._work.values(), *self._agents.values(), *self._claims.values()]:
            signal.fire()
        for signal, _ in list(self._jobs.values()):
            signal.fire()
