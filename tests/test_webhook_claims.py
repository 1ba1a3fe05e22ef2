"""Webhook deliveries claimed before they are sent (store/repo/webhooks.py): two replicas never
send one delivery at once, one left by a dead claimer is sent again, and on PostgreSQL a
claimer skips the rows another is claiming (``FOR UPDATE SKIP LOCKED``) instead of taking them too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from coordinator.store.base_billing import WebhookRecord
from coordinator.store.factory import open_store
from coordinator.store.postgres_schema import migrate_postgresql
from coordinator.store.repo.webhooks import claim_due_deliveries

CLAIM_MS = 15_000
NOW = 1_800_000_000_000


async def test_a_claimed_delivery_is_one_replicas_until_its_claim_runs_out(store_url: str) -> None:
    async with open_store(store_url) as a, open_store(store_url) as b:
        await a.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="payg",
                          tokens=[], now=0)
        await a.insert_webhook(WebhookRecord(id="whk_1", workspace_id="ws_1", url="https://example.com/h",
                                             events=["workspace.soft_cap_reached"], created_at=0), "whsec_1")
        await a._write(lambda tx: _enqueue(tx, ["evt_1", "evt_2"], ordering_key="billing:ws_1"))
        await a._write(lambda tx: _enqueue(tx, ["evt_3"], ordering_key="billing:ws_2"))

        claimed = await a.claim_deliveries(NOW, 10, CLAIM_MS)
        # The heads of both queues; evt_2 waits behind evt_1 in its queue.
        assert [d.event_id for d in claimed] == ["evt_1", "evt_3"]
        assert {d.claimed_until for d in claimed} == {NOW + CLAIM_MS}
        assert await b.claim_deliveries(NOW + CLAIM_MS - 1, 10, CLAIM_MS) == []
        first, third = claimed
        # A sends evt_3 and records it; A then dies holding evt_1.
        await a.record_delivery_attempt(third, attempted_at=NOW, status_code=204, latency_ms=1, error=None,
                                        outcome="delivered", next_attempt_at=None, now=NOW + 1)
        # Once the claim runs out, B takes evt_1 over (at least once) ...
        retaken = await b.claim_deliveries(NOW + CLAIM_MS, 10, CLAIM_MS)
        assert [d.event_id for d in retaken] == ["evt_1"]
        # ... and A's late record of its attempt no longer moves the delivery on.
        await a.record_delivery_attempt(first, attempted_at=NOW, status_code=204, latency_ms=1, error=None,
                                        outcome="delivered", next_attempt_at=None, now=NOW + CLAIM_MS + 1)
        assert await _delivery(b, "evt_1") == ("pending", 0)
        await b.record_delivery_attempt(retaken[0], attempted_at=NOW + CLAIM_MS, status_code=204, latency_ms=1,
                                        error=None, outcome="delivered", next_attempt_at=None, now=NOW + CLAIM_MS + 2)
        assert await _delivery(b, "evt_1") == ("delivered", 1)
        # Now evt_2 heads its queue.
        assert [d.event_id for d in await a.claim_deliveries(NOW + CLAIM_MS + 3, 10, CLAIM_MS)] == ["evt_2"]


async def test_claimed_but_not_started_deliveries_are_handed_back(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="payg",
                              tokens=[], now=0)
        await store.insert_webhook(WebhookRecord(id="whk_1", workspace_id="ws_1", url="https://example.com/h",
                                                 events=["workspace.soft_cap_reached"], created_at=0), "whsec_1")
        await store._write(lambda tx: _enqueue(tx, ["evt_1"], ordering_key="k"))
        # A claimer with no free slot for the webhook leaves its deliveries alone.
        assert await store.claim_deliveries(NOW, 10, CLAIM_MS, skip_webhooks=["whk_1"]) == []
        claimed = await store.claim_deliveries(NOW, 10, CLAIM_MS)
        await store.release_deliveries(claimed, NOW + 5)
        assert [d.event_id for d in await store.claim_deliveries(NOW + 5, 10, CLAIM_MS)] == ["evt_1"]


def _enqueue(tx: Any, event_ids: list[str], *, ordering_key: str) -> None:
    for event_id in event_ids:
        tx.execute("INSERT INTO webhook_events (id, workspace_id, type, created_at, body) VALUES (?, 'ws_1', "
                   "'workspace.soft_cap_reached', 0, ?)", (event_id, b"{}"))
        tx.execute("INSERT INTO webhook_deliveries (webhook_id, event_id, ordering_key, state, created_at, "
                   "next_attempt_at) VALUES ('whk_1', ?, ?, 'pending', 0, 0)", (event_id, ordering_key))


async def _delivery(store: Any, event_id: str) -> tuple[str, int]:
    row = (await store._read("SELECT state, attempts FROM webhook_deliveries WHERE event_id = ?", (event_id,)))[0]
    return str(row[0]), int(row[1])


# --- the same SQL on PostgreSQL, two transactions at once -------------------------------------

class _Row:
    def __init__(self, names: list[str], values: Sequence[Any]) -> None:
        self._names, self._values = names, values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._names.index(key)]


class _Dialect:
    name = "postgresql"
    skip_locked = "FOR UPDATE SKIP LOCKED"


class _PgTx:
    """Just enough of a store transaction for the claim's SQL: ``?`` placeholders, rows by name
    and position, the dialect."""

    dialect = _Dialect()

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cursor = self.conn.execute(sql.replace("?", "%s"), params)
        names = [column.name for column in cursor.description or []]
        rows = [_Row(names, values) for values in cursor.fetchall()] if cursor.description else []

        class Result:
            rowcount = cursor.rowcount

            def fetchall(self) -> list[_Row]:
                return rows

            def fetchone(self) -> _Row | None:
                return rows[0] if rows else None

        return Result()


@contextmanager
def _transaction(url: str) -> Iterator[_PgTx]:
    with psycopg.connect(url) as conn:
        yield _PgTx(conn)  # psycopg commits on a clean exit


@pytest.fixture
def outbox(postgres_url: str) -> str:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        migrate_postgresql(conn)
        conn.execute("INSERT INTO workspaces (id, name, plan, created_at) VALUES ('ws_1', 'w', 'payg', 0)")
        conn.execute("INSERT INTO webhooks (id, workspace_id, url, events, created_at) "
                     "VALUES ('whk_1', 'ws_1', 'https://example.com/h', '[]', 0)")
        for event_id, key in (("evt_1", "job_1"), ("evt_2", "job_1"), ("evt_3", "job_2")):
            conn.execute("INSERT INTO webhook_events (id, workspace_id, type, created_at, body) "
                         "VALUES (%s, 'ws_1', 'job.created', 0, %s)", (event_id, b"{}"))
            conn.execute("INSERT INTO webhook_deliveries (webhook_id, event_id, ordering_key, state, created_at, "
                         "next_attempt_at) VALUES ('whk_1', %s, %s, 'pending', 0, 0)", (event_id, key))
    return postgres_url


def test_on_postgresql_a_concurrent_claimer_skips_what_another_is_claiming(outbox: str) -> None:
    with _transaction(outbox) as first:
        mine = claim_due_deliveries(first, NOW, 1, CLAIM_MS)
        assert [d.event_id for d in mine] == ["evt_1"]
        # A second replica claims while the first's transaction is still open: it neither waits
        # for the locked row nor takes it (without SKIP LOCKED it would block on evt_1, then
        # claim it too once the first commits); evt_2 is behind evt_1 in its queue.
        found: list[list[str]] = []
        errors: list[BaseException] = []

        def other_replica() -> None:
            try:
                with _transaction(outbox) as second:
                    second.execute("SET LOCAL lock_timeout = '5s'")
                    found.append([d.event_id for d in claim_due_deliveries(second, NOW, 10, CLAIM_MS)])
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=other_replica)
        thread.start()
        thread.join(timeout=60)
        assert errors == [] and found == [["evt_3"]]
    # Committed: evt_1 is claimed until NOW + CLAIM_MS, evt_3 too; nothing else is due.
    with _transaction(outbox) as later:
        assert claim_due_deliveries(later, NOW + CLAIM_MS - 1, 10, CLAIM_MS) == []
    with _transaction(outbox) as after_the_claims:
        retaken = claim_due_deliveries(after_the_claims, NOW + CLAIM_MS, 10, CLAIM_MS)
        assert sorted(d.event_id for d in retaken) == ["evt_1", "evt_3"]
