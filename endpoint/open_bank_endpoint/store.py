"""The endpoint's database: the transaction list and the accounts (username, password hash, command uuid)."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from command_handler.adapters.database import binary_arrays
from command_handler.config import DatabaseSettings
from open_bank_endpoint.errors import StoreUnavailable
from open_bank_endpoint.money import euro

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_CHANGE_FIELDS = ("iban", "new_balance", "changed_by", "from_to", "direction", "descr")
COLUMNS = ", ".join(("id", *_CHANGE_FIELDS))
# one statement for any number of changes, the columns as arrays (sent binary: binary_arrays)
_ADD_CHANGES = text(
    f"INSERT INTO transaction ({', '.join(_CHANGE_FIELDS)}) "
    f"SELECT {', '.join(_CHANGE_FIELDS)} FROM unnest("
    + ", ".join(f"CAST(:{name} AS text[])" for name in _CHANGE_FIELDS)
    + f") WITH ORDINALITY AS c({', '.join(_CHANGE_FIELDS)}, n) ORDER BY n RETURNING id"
)


P = ParamSpec("P")
R = TypeVar("R")


def _translated(method: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except SQLAlchemyError as err:
            cause = str(getattr(err, "orig", None) or err).strip().splitlines()
            log.warning("database: %s failed: %s", method.__name__, cause[0] if cause else type(err).__name__)
            raise StoreUnavailable("the bank's database did not answer; try again") from err

    return call


@dataclass(frozen=True)
class Change:
    """A BalanceChanged as the endpoint stores and streams it."""

    iban: str
    new_balance: int
    changed_by: int
    from_to: str
    description: str

    def row(self) -> dict[str, Any]:
        return {
            "iban": self.iban,
            "new_balance": euro(self.new_balance),
            "changed_by": euro(abs(self.changed_by)),
            "from_to": self.from_to,
            "direction": "DEBIT" if self.changed_by < 0 else "CREDIT",
            "descr": self.description,
        }


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    uuid: uuid.UUID


def upgrade(db: DatabaseSettings) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", db.url().replace("%", "%%"))
    command.upgrade(config, "head")


def make_engine(db: DatabaseSettings, pool_size: int = 8, pre_ping: bool = True, role: str = "") -> Engine:
    """``pre_ping``: a connection is tried before each use (a query of a person is not failed by a connection
    the database dropped); off for the writer, whose failed batch is retried anyway."""
    engine = create_engine(
        db.url(),
        pool_size=pool_size,
        max_overflow=pool_size // 2,
        pool_pre_ping=pre_ping,
        connect_args={"connect_timeout": 5, "application_name": "-".join(filter(None, ("graphql-endpoint", role)))},
    )
    event.listen(engine, "connect", binary_arrays)
    return engine


class Store:
    def __init__(self, engine: Engine, writer: Engine | None = None) -> None:
        """``writer``: the engine ``add_changes`` uses (default ``engine``), autocommitted."""
        self.engine = engine
        self._writer = writer
        self._autocommit = (writer or engine).execution_options(isolation_level="AUTOCOMMIT")  # its own pool

    def dispose(self) -> None:
        self.engine.dispose()
        if self._writer is not None:
            self._writer.dispose()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    # -- transactions -------------------------------------------------------------

    @_translated
    def add_changes(self, changes: Sequence[Change]) -> list[dict[str, Any]]:
        """Store the changes in one transaction, in order; their rows with the ids given."""
        if not changes:
            return []
        rows = [c.row() for c in changes]
        columns = {name: [row[name] for row in rows] for name in _CHANGE_FIELDS}
        try:
            ids = self._insert(columns)
        except DBAPIError as err:
            if not err.connection_invalidated:  # the connection was dropped (a restart): once more, on a new one
                raise
            ids = self._insert(columns)
        return [{"id": i, **row} for i, row in zip(ids, rows, strict=True)]

    def _insert(self, columns: dict[str, list[str]]) -> list[int]:
        # one statement is atomic by itself: no BEGIN and COMMIT round trips around it
        with self._autocommit.connect() as conn:
            result = conn.execute(_ADD_CHANGES, columns)
            # the rows go in in the order given (ORDER BY n), so their identities rise in that order
            return sorted(r[0] for r in result)

    @_translated
    def transaction(self, transaction_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(text(f"SELECT {COLUMNS} FROM transaction WHERE id = :id"), {"id": transaction_id})
            found = row.mappings().first()
        return dict(found) if found else None

    @_translated
    def by_iban(self, iban: str, max_items: int) -> list[dict[str, Any]]:
        limit = max(0, min(max_items, 10_000))
        sql = f"SELECT {COLUMNS} FROM transaction WHERE iban = :iban ORDER BY id DESC LIMIT :limit"
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(text(sql), {"iban": iban, "limit": limit}).mappings()]

    @_translated
    def all_last(self) -> list[dict[str, Any]]:
        sql = f"SELECT {COLUMNS} FROM transaction WHERE id IN (SELECT max(id) FROM transaction GROUP BY iban) ORDER BY iban"
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(text(sql)).mappings()]

    # -- accounts -----------------------------------------------------------------

    @_translated
    def account(self, username: str) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT username, password, uuid FROM account WHERE username = :u"), {"u": username}
            ).first()
        return Account(row[0], row[1], row[2]) if row else None

    @_translated
    def add_account(self, username: str, password_hash: str, command_id: uuid.UUID) -> bool:
        """Insert the account; False when the username was taken meanwhile."""
        with self.engine.begin() as conn:
            result = conn.execute(
                text("INSERT INTO account (username, password, uuid) VALUES (:u, :p, :id) ON CONFLICT DO NOTHING"),
                {"u": username, "p": password_hash, "id": command_id},
            )
        return result.rowcount == 1

    @_translated
    def remove_account(self, command_id: uuid.UUID) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM account WHERE uuid = :id"), {"id": command_id})
