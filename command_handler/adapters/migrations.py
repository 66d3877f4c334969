"""Alembic, driven from code: ``command-handler migrate`` and the local stack use this."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from command_handler.adapters.database import drop_database, ensure_role_and_database
from command_handler.adapters.schema_version import MIGRATIONS_DIR
from command_handler.config import DatabaseSettings
from command_handler.errors import OperatorError


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


# The reference's setup script makes exactly these tables and columns (see the contract), and no alembic_version.
REFERENCE_LAYOUT = {
    "balance": {"balance_id", "username", "iban", "token", "amount", "lmt", "created_at", "updated_at"},
    "cac": {"uuid", "username", "iban", "token", "reason", "created_at"},
    "cmt": {"uuid", "reason", "created_at"},
}
REFERENCE_REVISION = "0001"  # the revision whose tables the reference's layout has


class UnknownLayout(OperatorError):
    """The database has tables but no migration history, and they are not the reference's: left untouched."""


def upgrade_or_adopt(engine: Engine, url: str) -> list[str]:
    """Upgrade to the latest revision. A database made by the reference's setup script (its tables, no
    ``alembic_version``) is first adopted in place: every row kept, the IBAN index made unique, revision
    ``0001`` stamped; all of it in the same transaction as the upgrade. Returns what adoption did."""
    with engine.begin() as conn:
        steps = _adopt_reference(conn)
        config = alembic_config(url)
        config.attributes["connection"] = conn
        if steps:
            command.stamp(config, REFERENCE_REVISION)
        command.upgrade(config, "head")
    return steps


def _adopt_reference(conn: Connection) -> list[str]:
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    if not tables or "alembic_version" in tables:
        return []
    layout = {t: {c["name"] for c in inspector.get_columns(t)} for t in tables}
    if layout != REFERENCE_LAYOUT:
        raise UnknownLayout(
            f"the database has tables ({', '.join(sorted(tables))}) but no migration history, and they are not "
            "the reference handler's layout (balance, cac and cmt with the reference's columns): "
            "nothing was changed; migrate an empty database or the reference's"
        )
    duplicated = conn.execute(
        text("SELECT iban, count(*) FROM balance GROUP BY iban HAVING count(*) > 1 ORDER BY iban LIMIT 5")
    ).all()
    if duplicated:
        listed = ", ".join(f"{iban} ({n} rows)" for iban, n in duplicated)
        raise UnknownLayout(
            f"the reference's balance table has IBANs on more than one row ({listed}); an IBAN must name one "
            "account: resolve them, then migrate again (nothing was changed)"
        )
    counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in sorted(REFERENCE_LAYOUT)}
    steps = [
        "recognised the reference handler's layout ("
        + ", ".join(f"{t}: {n} rows" for t, n in counts.items())
        + "): adopting it in place, every row kept"
    ]
    conn.execute(text("CREATE UNIQUE INDEX balance_iban_idx ON balance (iban)"))
    steps.append("balance: unique index balance_iban_idx on iban (the reference's index was not unique)")
    if "balance_iban" in {i["name"] for i in inspect(conn).get_indexes("balance")}:
        conn.execute(text("DROP INDEX balance_iban"))
        steps.append("balance: dropped the reference's non-unique index balance_iban (the unique one serves)")
    steps.append(f"stamped revision {REFERENCE_REVISION}, then upgraded to the latest revision")
    return steps


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def fresh_database(db: DatabaseSettings) -> None:
    """Drop ``db.name``, create it again (and its role if missing) and migrate it: benchmarks and tests."""
    drop_database(db.admin_url, db.name)
    ensure_role_and_database(db.admin_url, db.user, db.password, db.name)
    upgrade(db.url())
