"""The unit of work on PostgreSQL: one transaction with a ``PostgresLedger``, and its errors translated.

SQLAlchemy's and psycopg's errors become the project's own kinds, so the
service layer and the consumer loop act without knowing either:

* ``Conflict``: a deadlock or serialization failure; retry the transaction now.
* ``Unavailable``: the database cannot be reached; retry later, with backoff.
* ``Rejected``: the database refuses this input for good (e.g. invalid data).
"""

from __future__ import annotations

from types import TracebackType

from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.exc import DataError, DBAPIError, DisconnectionError

from command_handler.adapters.ledger import PostgresLedger
from command_handler.errors import Conflict, InfrastructureError, Rejected, Unavailable

CONFLICT_STATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
# Only what the input itself causes is refused for good: data exceptions (a value the column cannot
# hold) and integrity violations. Everything else may heal and is waited for: a read-only standby
# after a failover (25006), a revoked privilege (42501), a half-applied migration (42P01), a lock or
# statement timeout (55P03, 57014), connection failures, a server shutting down, resources.
REJECTED_CLASSES = ("22", "23")


def classify(exc: BaseException) -> InfrastructureError | None:
    """The kind of a database exception, or None when it is not one."""
    if isinstance(exc, DisconnectionError):
        return Unavailable(str(exc))
    if not isinstance(exc, DBAPIError):
        return None
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    summary = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    if sqlstate in CONFLICT_STATES:
        return Conflict(summary)
    if sqlstate.startswith(REJECTED_CLASSES) and not exc.connection_invalidated:
        return Rejected(f"{sqlstate}: {summary}")
    if isinstance(exc, DataError) and not exc.connection_invalidated:
        # refused by the driver before sending (e.g. a NUL character in a text): the data, for good
        return Rejected(f"{sqlstate or 'refused by the driver'}: {summary}")
    return Unavailable(f"{sqlstate or 'no SQLSTATE'}: {summary}")


class SqlAlchemyUnitOfWork:
    """Commits when the block ends normally, rolls back otherwise."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ledger: PostgresLedger

    def __enter__(self) -> SqlAlchemyUnitOfWork:
        try:
            self._conn: Connection = self.engine.connect()
            self._tx: RootTransaction = self._conn.begin()
        except Exception as err:
            kind = classify(err)
            if kind is None:
                raise
            raise kind from err
        self.ledger = PostgresLedger(self._conn)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc is None:
                self._tx.commit()
            else:
                self._tx.rollback()
        except Exception as err:
            kind = classify(err)
            if kind is None:
                raise
            raise kind from err
        finally:
            self._conn.close()
        if exc is not None:
            kind = classify(exc)
            if kind is not None:
                raise kind from exc
