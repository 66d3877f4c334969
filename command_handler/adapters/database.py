"""Postgres connections: the handler's engine, waiting for the server, and local provisioning."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.array import ListBinaryDumper
from sqlalchemy import Engine, create_engine, event, text

from command_handler.config import DatabaseSettings
from command_handler.retry import retry


def binary_arrays(dbapi_connection: Any, connection_record: Any = None) -> None:
    """Send Python lists as binary arrays on this connection: the ledger passes every batch as arrays
    (``unnest``), and psycopg's text array dumper, which quotes each element in Python, cost 3 to 7 times
    more of the handler's CPU per element than the binary one. Only the wire format changes: the ledger
    casts every array to its column type, so the server sees the same values."""
    dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)


def make_engine(db: DatabaseSettings, pool_size: int = 4) -> Engine:
    engine = create_engine(
        db.url(),
        pool_size=pool_size,
        max_overflow=2,
        # no ping at each checkout (a round trip per batch): a connection the server dropped fails its
        # batch, which the loop retries (Unavailable) on a new one; SQLAlchemy then renews the whole pool
        pool_pre_ping=False,
        connect_args={
            "connect_timeout": 5,
            "application_name": "command-handler",
            # a hung server or a held lock must not block the consumer thread for ever: the statement
            # fails, the batch is retried later, and the handler reports not-ready meanwhile
            "options": f"-c statement_timeout={db.statement_timeout_ms} -c lock_timeout={db.lock_timeout_ms}",
            # a dead peer (a failover, a cut network) is noticed in about 25 s, not after hours
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        },
    )
    event.listen(engine, "connect", binary_arrays)
    return engine


def wait_for_database(engine: Engine, timeout_s: float) -> None:
    """Retry ``SELECT 1`` with backoff until the database answers; NotReady after ``timeout_s``."""

    def ping() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    retry(ping, f"database {engine.url.render_as_string(hide_password=True)}", timeout_s)


def ensure_role_and_database(admin_url: str, role: str, password: str, database: str) -> list[str]:
    """Create the login role and the database it owns, where missing. Returns what was created."""
    created = []
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
            )
            created.append(f"role {role}")
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role)))
            created.append(f"database {database}")
    return created


def drop_database(admin_url: str, database: str) -> None:
    """Drop a database (local stack reset and tests only)."""
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
