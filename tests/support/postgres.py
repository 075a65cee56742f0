"""Whether the local PostgreSQL the postgres-marked tests use (127.0.0.1:5432, database 'test', trust auth)
answers."""

from __future__ import annotations


def postgres_reachable() -> str | None:
    """None if PostgreSQL answers at 127.0.0.1:5432, else the reason it doesn't."""
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 (any failure means: skip with the reason)
        return f"PostgreSQL at 127.0.0.1:5432 (database 'test', trust auth) is not reachable: {exc}"
