"""The PostgreSQL test fixture itself: a real server answers, each test gets its own database."""

from __future__ import annotations

import psycopg

from tests.postgres import PostgresServer


def test_the_server_answers_on_its_database(postgres_url: str, postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT version(), current_database()").fetchone()
    assert row is not None
    version, database = row
    assert version.startswith("PostgreSQL ")
    assert postgres_url.endswith(f"/{database}")
    assert postgres_url.startswith(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/")
    # Its files live in its own temporary directory, socket included (never a system path).
    assert (postgres_server.socket_dir / f".s.PGSQL.{postgres_server.port}").exists()


def test_each_test_gets_a_fresh_empty_database(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone()
        conn.execute("CREATE TABLE only_here (id integer)")
    assert tables == (0,)
