"""Alembic, driven from code: ``command-handler migrate`` and the local stack use this."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from command_handler.adapters.database import drop_database, ensure_role_and_database
from command_handler.adapters.schema_version import MIGRATIONS_DIR
from command_handler.config import DatabaseSettings


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def fresh_database(db: DatabaseSettings) -> None:
    """Drop ``db.name``, create it again (and its role if missing) and migrate it: benchmarks and tests."""
    drop_database(db.admin_url, db.name)
    ensure_role_and_database(db.admin_url, db.user, db.password, db.name)
    upgrade(db.url())
