"""The webhook delivery worker: sends the outbox, at least once, in order per job.

``serve_webhook_deliveries`` loops: take the due deliveries that head their (webhook, job)
queue, start each in its own task (at most ``per_endpoint_concurrency`` per webhook and
``max_in_flight`` in all, each bounded by ``timeout_seconds``), then sleep until the next
retry is due, a new delivery is committed, or an attempt ends. A slow or dead receiver only
ever holds its own slots: the API and other webhooks carry on.

An attempt is recorded after the receiver answers; a coordinator killed mid-attempt sends
that delivery again after restart (receivers de-duplicate on ``X-Compute-Event-Id``).

Several replicas run this worker each. A delivery is *claimed* before it is sent
(``Store.claim_deliveries``: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, its ``next_attempt_at``
moved to the claim's end), so two replicas never send the same delivery at once; the attempt
is recorded only while the claim is still the delivery's. A replica killed mid-attempt leaves
its claims, which fall due again ``timeout_seconds`` + 5 s later and are sent again then.
"""

from __future__ import annotations

import random
from collections import Counter

import httpx
import structlog
import trio

from common.clock import Clock, to_millis
from common.errors import Unprocessable
from common.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header
from coordinator.store.base import Store
from coordinator.store.base_billing import DueDelivery
from coordinator.webhooks import (
    DeliveryConfig,
    Resolver,
    check_url,
    pinned_request,
    resolve_with_trio,
    retry_after_failure,
)

log = structlog.get_logger("tanvrit.coordinator.webhooks")

USER_AGENT = "tanvrit-compute-webhooks/0"
CLAIM_MARGIN_SECONDS = 5.0


class DeliveryWorker:
    def __init__(self, store: Store, clock: Clock, config: DeliveryConfig, *, allow_private: bool,
                 client: httpx.AsyncClient, resolve: Resolver = resolve_with_trio,
                 rng: random.Random | None = None) -> None:
        self.store = store
        self.clock = clock
        self.config = config
        self.allow_private = allow_private
        self.client = client
        self.resolve = resolve
        self.rng = rng or random.Random()
        self.in_flight: set[int] = set()
        self.per_webhook: Counter[str] = Counter()
        # How long a claimed delivery is this replica's alone: one attempt (bounded by the
        # timeout) and its recording, with room to spare. A replica that dies mid-attempt
        # leaves it due again after this; it is sent again then (at least once).
        self.claim_ms = int((config.timeout_seconds + CLAIM_MARGIN_SECONDS) * 1000)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        signal = self.store.outbox_signal
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                changed = signal.snapshot()
                now = to_millis(self.clock.now())
                room = self.config.max_in_flight - len(self.in_flight)
                # Webhooks whose slots are all taken here are left to other replicas (or later).
                full = [hook for hook, busy in self.per_webhook.items()
                        if busy >= self.config.per_endpoint_concurrency]
                due = (await self.store.claim_deliveries(now, room, self.claim_ms, skip_webhooks=full)
                       if room > 0 else [])
                unstarted = []
                for delivery in due:
                    if (delivery.id in self.in_flight
                            or self.per_webhook[delivery.webhook_id] >= self.config.per_endpoint_concurrency):
                        unstarted.append(delivery)
                        continue
                    self.in_flight.add(delivery.id)
                    self.per_webhook[delivery.webhook_id] += 1
                    nursery.start_soon(self._attempt, delivery)
                if unstarted:
                    await self.store.release_deliveries(unstarted, now)
                wait = self.config.poll_seconds
                next_due = await self.store.next_delivery_due_after(now)
                if next_due is not None:
                    # Measured from the clock's exact time, not from ``now`` (whole milliseconds,
                    # truncated): waking up to 1 ms past ``next_due`` stretched a retry gap
                    # capped at retry_max_seconds to 3600.0000000000005 s.
                    exact_now_ms = self.clock.now().timestamp() * 1000
                    wait = min(wait, max((next_due - exact_now_ms) / 1000, 0.0))
                with trio.move_on_after(wait):
                    await changed.wait()

    async def _attempt(self, delivery: DueDelivery) -> None:
        try:
            await self._send(delivery)
        except Exception:
            # One bad attempt must not take the coordinator down; the delivery stays pending.
            log.exception("webhook attempt crashed", webhook=delivery.webhook_id, event_id=delivery.event_id)
        finally:
            self.in_flight.discard(delivery.id)
            self.per_webhook[delivery.webhook_id] -= 1
            # The next delivery of this job (or a slot for this webhook) is free now.
            self.store.outbox_signal.fire()

    async def _send(self, delivery: DueDelivery) -> None:
        started = self.clock.now()
        attempted_at = to_millis(started)
        target = await self.store.delivery_target(delivery.webhook_id, attempted_at)
        if target is None or not target.secrets:
            await self.store.cancel_delivery(delivery.id, attempted_at)
            return
        status: int | None = None
        error: str | None = None
        began = trio.current_time()
        try:
            # Checked again at send time (a name may resolve elsewhere than at registration), and
            # the connection goes to the address just vetted, not to a second lookup of the name.
            addresses = await check_url(target.url, allow_private=self.allow_private, resolve=self.resolve)
            url, host_header, extensions = pinned_request(target.url, addresses[0])
            headers = {
                **host_header,
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                SIGNATURE_HEADER: signature_header(target.secrets, int(started.timestamp()), delivery.body),
                EVENT_ID_HEADER: delivery.event_id,
            }
            with trio.fail_after(self.config.timeout_seconds):
                async with self.client.stream("POST", url, content=delivery.body, headers=headers,
                                              extensions=extensions) as response:
                    status = response.status_code
            if not 200 <= status < 300:
                error = f"the receiver answered HTTP {status}"
        except Unprocessable as exc:
            error = f"refused: {exc.message}"
        except trio.TooSlowError:
            error = f"no answer within {self.config.timeout_seconds:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        latency_ms = int((trio.current_time() - began) * 1000)
        now = to_millis(self.clock.now())
        if error is None:
            outcome, next_at = "delivered", None
        else:
            decision = retry_after_failure(delivery.attempts + 1, delivery.created_at, now, self.config, self.rng)
            outcome, next_at = ("failed", None) if decision.give_up else ("retry", decision.next_attempt_at)
            log.info("webhook attempt failed", webhook=delivery.webhook_id, event_id=delivery.event_id,
                     attempt=delivery.attempts + 1, error=error, outcome=outcome)
        await self.store.record_delivery_attempt(
            delivery, attempted_at=attempted_at, status_code=status, latency_ms=latency_ms, error=error,
            outcome=outcome, next_attempt_at=next_at, now=now,
        )


async def serve_webhook_deliveries(store: Store, clock: Clock, config: DeliveryConfig, *, allow_private: bool,
                                   transport: httpx.AsyncBaseTransport | None = None,
                                   resolve: Resolver = resolve_with_trio, rng: random.Random | None = None,
                                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Deliver the outbox until cancelled. ``transport`` and ``resolve`` replace the network in tests."""
    limits = httpx.Limits(max_connections=config.max_in_flight,
                          max_keepalive_connections=config.per_endpoint_concurrency)
    async with httpx.AsyncClient(transport=transport, timeout=config.timeout_seconds, follow_redirects=False,
                                 limits=limits, trust_env=False) as client:
        worker = DeliveryWorker(store, clock, config, allow_private=allow_private, client=client,
                                resolve=resolve, rng=rng)
        await worker.serve(task_status=task_status)
