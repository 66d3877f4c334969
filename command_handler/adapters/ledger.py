"""The handler's tables in Postgres (balance, cac, cmt, cmt_balance_changed), used inside one transaction.

Every method works on many commands at once (arrays and ``unnest``), so a batch
costs a fixed number of round trips whatever its size. Locks are always taken
in the same global order: ``cac`` claims, then ``cmt`` claims (both by uuid),
then ``balance`` rows (by iban). Two handlers working on overlapping batches
therefore queue behind each other instead of deadlocking.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import Connection, text

from command_handler.domain.model import BalanceChanged
from command_handler.domain.rules import Account


@dataclass(frozen=True)
class StoredCreation:
    username: str | None
    iban: str | None
    token: str | None
    reason: str | None


@dataclass(frozen=True)
class StoredTransfer:
    reason: str | None
    events: tuple[BalanceChanged, ...]


class Ledger:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- idempotency claims -----------------------------------------------------

    def claim(self, table: str, ids: Iterable[UUID]) -> set[UUID]:
        """Insert a row for each id not handled before; return the ids claimed now.

        An id that another transaction has claimed but not committed makes this
        wait for that transaction: then it is either handled (not returned) or
        rolled back (claimed here).
        """
        assert table in ("cac", "cmt")
        ordered = sorted(set(ids))
        if not ordered:
            return set()
        rows = self.conn.execute(
            text(
                f"INSERT INTO {table} (uuid) SELECT u FROM unnest(CAST(:ids AS uuid[])) AS u ORDER BY u "
                "ON CONFLICT (uuid) DO NOTHING RETURNING uuid"
            ),
            {"ids": ordered},
        )
        return {r[0] for r in rows}

    def stored_creations(self, ids: Iterable[UUID]) -> dict[UUID, StoredCreation]:
        ids = list(ids)
        if not ids:
            return {}
        rows = self.conn.execute(
            text("SELECT uuid, username, iban, token, reason FROM cac WHERE uuid = ANY(CAST(:ids AS uuid[]))"),
            {"ids": ids},
        )
        return {r[0]: StoredCreation(r[1], r[2], r[3], r[4]) for r in rows}

    def stored_transfers(self, ids: Iterable[UUID]) -> dict[UUID, StoredTransfer]:
        ids = list(ids)
        if not ids:
            return {}
        reasons: dict[UUID, str | None] = {
            r[0]: r[1]
            for r in self.conn.execute(
                text("SELECT uuid, reason FROM cmt WHERE uuid = ANY(CAST(:ids AS uuid[]))"), {"ids": ids}
            )
        }
        events: dict[UUID, list[BalanceChanged]] = defaultdict(list)
        for r in self.conn.execute(
            text(
                "SELECT cmt_uuid, username, iban, new_balance, changed_by, from_to, description "
                "FROM cmt_balance_changed WHERE cmt_uuid = ANY(CAST(:ids AS uuid[])) ORDER BY cmt_uuid, seq"
            ),
            {"ids": ids},
        ):
            events[r[0]].append(BalanceChanged(*r[1:]))
        return {i: StoredTransfer(reasons.get(i), tuple(events.get(i, ()))) for i in reasons}

    # -- balances ---------------------------------------------------------------

    def lock_accounts(self, ibans: Iterable[str]) -> dict[str, Account]:
        ordered = sorted(set(ibans))
        if not ordered:
            return {}
        rows = self.conn.execute(
            text(
                "SELECT username, iban, token, amount, lmt FROM balance "
                "WHERE iban = ANY(CAST(:ibans AS text[])) ORDER BY iban FOR UPDATE"
            ),
            {"ibans": ordered},
        )
        return {r[1]: Account(r[0], r[1], r[2], r[3], r[4]) for r in rows}

    def open_account(self, username: str, iban: str, token: str) -> Account | None:
        """Insert a new account; None when the IBAN is taken already."""
        row = self.conn.execute(
            text(
                "INSERT INTO balance (username, iban, token) VALUES (:u, :i, :t) "
                "ON CONFLICT (iban) DO NOTHING RETURNING amount, lmt"
            ),
            {"u": username, "i": iban, "t": token},
        ).first()
        return None if row is None else Account(username, iban, token, row[0], row[1])

    def set_amounts(self, accounts: Sequence[Account]) -> None:
        if not accounts:
            return
        self.conn.execute(
            text(
                "UPDATE balance AS b SET amount = u.amount "
                "FROM unnest(CAST(:ibans AS text[]), CAST(:amounts AS bigint[])) AS u(iban, amount) "
                "WHERE b.iban = u.iban"
            ),
            {"ibans": [a.iban for a in accounts], "amounts": [a.amount for a in accounts]},
        )

    # -- outcomes ---------------------------------------------------------------

    def record_creations(self, rows: Sequence[tuple[UUID, StoredCreation]]) -> None:
        if not rows:
            return
        self.conn.execute(
            text(
                "UPDATE cac AS c SET username = u.username, iban = u.iban, token = u.token, reason = u.reason "
                "FROM unnest(CAST(:ids AS uuid[]), CAST(:usernames AS text[]), CAST(:ibans AS text[]), "
                "CAST(:tokens AS text[]), CAST(:reasons AS text[])) AS u(uuid, username, iban, token, reason) "
                "WHERE c.uuid = u.uuid"
            ),
            {
                "ids": [i for i, _ in rows],
                "usernames": [s.username for _, s in rows],
                "ibans": [s.iban for _, s in rows],
                "tokens": [s.token for _, s in rows],
                "reasons": [s.reason for _, s in rows],
            },
        )

    def record_transfers(self, rows: Sequence[tuple[UUID, StoredTransfer]]) -> None:
        failed = [(i, s.reason) for i, s in rows if s.reason is not None]
        if failed:
            self.conn.execute(
                text(
                    "UPDATE cmt AS c SET reason = u.reason "
                    "FROM unnest(CAST(:ids AS uuid[]), CAST(:reasons AS text[])) AS u(uuid, reason) "
                    "WHERE c.uuid = u.uuid"
                ),
                {"ids": [i for i, _ in failed], "reasons": [r for _, r in failed]},
            )
        events = [(i, seq, e) for i, s in rows for seq, e in enumerate(s.events)]
        if events:
            self.conn.execute(
                text(
                    "INSERT INTO cmt_balance_changed "
                    "(cmt_uuid, seq, username, iban, new_balance, changed_by, from_to, description) "
                    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:seqs AS smallint[]), CAST(:usernames AS text[]), "
                    "CAST(:ibans AS text[]), CAST(:balances AS bigint[]), CAST(:changes AS bigint[]), "
                    "CAST(:from_tos AS text[]), CAST(:descriptions AS text[]))"
                ),
                {
                    "ids": [i for i, _, _ in events],
                    "seqs": [seq for _, seq, _ in events],
                    "usernames": [e.username for _, _, e in events],
                    "ibans": [e.iban for _, _, e in events],
                    "balances": [e.new_balance for _, _, e in events],
                    "changes": [e.changed_by for _, _, e in events],
                    "from_tos": [e.from_to for _, _, e in events],
                    "descriptions": [e.description for _, _, e in events],
                },
            )
