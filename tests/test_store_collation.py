"""Text sorts byte by byte on both databases, whatever collation the PostgreSQL database was
created with: cursor pages (``WHERE id < ? ORDER BY id DESC``) and ``ORDER BY`` on text must
give SQLite's order. The test server is initdb'd with ``--locale=C``, which hides the difference,
so the PostgreSQL case here runs on a database created with ICU's en-US collation (what many
managed services and a default initdb in an en_US.UTF-8 environment give: case-insensitive
first, punctuation before digits)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from common.states import JobState
from coordinator.store.base import JobRecord
from coordinator.store.factory import open_store
from tests.postgres import PostgresServer

IDS = ["job_a", "job_B", "job__", "job_1", "job_01m8tjqpgre10c8yvamt2hz5zk"]
BYTE_ORDER = sorted(IDS)  # Python compares code points: SQLite's BINARY, PostgreSQL's "C"


@pytest.fixture(params=["sqlite", "postgresql-icu-en-us"])
def collated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "coordinator.sqlite3")
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"t_icu_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f"""CREATE DATABASE "{name}" TEMPLATE template0 ENCODING 'UTF8'
                         LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LC_COLLATE 'C' LC_CTYPE 'C'""")
    try:
        yield server.url(name)
    finally:
        server.drop_database(name)


async def test_ids_and_cursors_sort_byte_by_byte_on_both_databases(collated_url: str) -> None:
    async with open_store(collated_url) as store:
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="payg",
                              tokens=[], now=0)
        for job_id in IDS:
            await store.insert_job(JobRecord(id=job_id, workspace_id="ws_1", state=JobState.QUEUED, command="true",
                                             name=None, labels={}, resources=None, env={}, timeout_seconds=60,
                                             created_at=0))
        ordered = [row[0] for row in store.read_now("SELECT id FROM jobs ORDER BY id")]
        assert ordered == BYTE_ORDER
        # A cursor page: everything before "job_B" in SQLite's order, whatever the database's default.
        page = [row[0] for row in store.read_now("SELECT id FROM jobs WHERE id < ? ORDER BY id DESC", ("job_B",))]
        assert page == [job_id for job_id in reversed(BYTE_ORDER) if job_id < "job_B"]
        if not collated_url.startswith("postgresql"):
            return
        # Every text column was given the "C" collation (a column added later without it fails here).
        loose = store.read_now(
            """SELECT c.table_name || '.' || c.column_name FROM information_schema.columns AS c
               JOIN information_schema.tables AS t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
               WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
                 AND c.table_name <> 'schema_migrations' AND c.data_type IN ('text', 'character varying')
                 AND c.collation_name IS DISTINCT FROM 'C'""")
        assert [row[0] for row in loose] == []
