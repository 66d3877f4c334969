"""Alembic migrations against a real, empty Postgres database."""

import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from command_handler.adapters import migrations
from command_handler.config import Settings

pytestmark = pytest.mark.integration


def test_upgrade_creates_the_contract_tables_and_seed_row(scratch_db: Settings) -> None:
    url = scratch_db.database.url()
    migrations.upgrade(url)
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"balance", "cac", "cmt"} <= tables
        columns = {c["name"] for c in inspect(engine).get_columns("balance")}
        assert columns >= {"balance_id", "username", "iban", "token", "amount", "lmt", "created_at", "updated_at"}
        assert {c["name"] for c in inspect(engine).get_columns("cac")} >= {
            "uuid",
            "username",
            "iban",
            "token",
            "reason",
        }
        assert {c["name"] for c in inspect(engine).get_columns("cmt")} >= {"uuid", "reason", "created_at"}
        with engine.begin() as conn:
            row = conn.execute(text("SELECT username, iban, token, amount, lmt FROM balance")).one()
            assert tuple(row) == ("open_web", "NL66OPEN0000000000", "00000000000000000000", 10**17, -50000)
            conn.execute(text("INSERT INTO balance (username, iban, token) VALUES ('a', 'NL00OPEN0000000001', 't')"))
            defaults = conn.execute(text("SELECT amount, lmt FROM balance WHERE username = 'a'")).one()
            assert tuple(defaults) == (0, -50000)
    finally:
        engine.dispose()


def test_iban_is_unique(scratch_db: Settings) -> None:
    url = scratch_db.database.url()
    migrations.upgrade(url)
    engine = create_engine(url)
    try:
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("INSERT INTO balance (username, iban, token) VALUES ('x', 'NL66OPEN0000000000', 't')"))
    finally:
        engine.dispose()


def test_updated_at_is_maintained_on_update(scratch_db: Settings) -> None:
    url = scratch_db.database.url()
    migrations.upgrade(url)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            before = conn.execute(text("SELECT updated_at FROM balance WHERE username = 'open_web'")).scalar_one()
        time.sleep(0.01)
        with engine.begin() as conn:
            conn.execute(text("UPDATE balance SET amount = amount - 1 WHERE username = 'open_web'"))
            after = conn.execute(text("SELECT updated_at FROM balance WHERE username = 'open_web'")).scalar_one()
        assert after > before
    finally:
        engine.dispose()


def test_upgrade_twice_is_a_no_op_and_downgrade_removes_everything(scratch_db: Settings) -> None:
    url = scratch_db.database.url()
    engine = create_engine(url)
    try:
        migrations.upgrade(url)
        head = migrations.current_revision(engine)
        assert head == migrations.head_revision()
        migrations.upgrade(url)
        assert migrations.current_revision(engine) == head
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM balance")).scalar_one() == 1
        migrations.downgrade(url, "base")
        assert migrations.current_revision(engine) is None
        assert not {"balance", "cac", "cmt"} & set(inspect(engine).get_table_names())
        migrations.upgrade(url)  # and back up again
        assert migrations.current_revision(engine) == head
    finally:
        engine.dispose()


def test_cli_migrate_creates_role_and_database_and_is_idempotent(services, unique) -> None:  # type: ignore[no-untyped-def]
    settings = services.settings()
    env = {
        **services.env,
        "DB_NAME": f"cli_{unique}",
        "DB_USER": f"role_{unique}",
        "DB_PASSWORD": "pw-" + unique,
        "PATH": __import__("os").environ["PATH"],
    }
    cmd = [sys.executable, "-m", "command_handler", "migrate", "--create-db"]
    try:
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr + first.stdout
        assert f"created role role_{unique}" in first.stdout
        assert "migrated from None to" in first.stdout
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert "nothing to do" in second.stdout
        assert "created" not in second.stdout
        assert "pw-" + unique not in first.stdout + first.stderr + second.stdout + second.stderr
    finally:
        import psycopg

        with psycopg.connect(settings.database.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "cli_{unique}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "role_{unique}"')
