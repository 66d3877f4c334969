"""The ledger on PostgreSQL: the tables balance, cac, cmt and cmt_balance_changed, inside one transaction.

It implements ``service_layer.ports.Ledger``: it stores the domain's outcomes of
handled commands and loads them back (a ``cac`` row holds the IBAN and token or
the reason; a ``cmt`` row the reason, its ``cmt_balance_changed`` rows the events).

Every method works on many commands at once (arrays and ``unnest``), so a batch
costs a fixed number of round trips whatever its size. Locks are always taken
in the same global order: ``cac`` claims, then ``cmt`` claims (both by uuid),
then ``balance`` rows (by iban). Two handlers working on overlapping batches
therefore queue behind each other instead of deadlocking.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from uuid import UUID

from sqlalchemy import Connection, TextClause, text

from command_handler.domain import rules
from command_handler.domain.model import (
    AccountCreationConfirmed,
    AccountCreationFailed,
    BalanceChanged,
    MoneyTransferConfirmed,
    MoneyTransferFailed,
    Outcome,
    Source,
)
from command_handler.domain.rules import Account
from command_handler.service_layer.ports import CreationOutcomes, TransferOutcomes

# The statements, built once (a text() clause parses its SQL for bind parameters when it is made). Every
# parameter is an array cast to its column type: the engine sends lists as binary arrays
# (database.binary_arrays), the cheapest way psycopg has to pass them; without that they go as text arrays.
_CLAIM_CREATIONS = text(
    "INSERT INTO cac (uuid) SELECT u FROM unnest(CAST(:ids AS uuid[])) AS u ORDER BY u "
    "ON CONFLICT (uuid) DO NOTHING RETURNING uuid"
)
# a transfer's row is written with its source at the claim, and only a failure's reason is written later:
# updating the row just inserted (every transfer's, as before) cost PostgreSQL about as much as the rest
# of the batch's writes together
_CLAIM_TRANSFERS = text(
    "INSERT INTO cmt (uuid, source_topic, source_partition, source_offset) "
    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:topics AS text[]), CAST(:partitions AS int[]), "
    "CAST(:offsets AS bigint[])) AS u(uuid, topic, partition, offset_) ORDER BY uuid "
    "ON CONFLICT (uuid) DO NOTHING RETURNING uuid"
)
_CREATION_OUTCOMES = text("SELECT uuid, iban, token, reason FROM cac WHERE uuid = ANY(CAST(:ids AS uuid[]))")
_TRANSFER_OUTCOMES = text(
    "SELECT uuid, reason, source_topic, source_partition, source_offset FROM cmt WHERE uuid = ANY(CAST(:ids AS uuid[]))"
)
_TRANSFER_EVENTS = text(
    "SELECT cmt_uuid, username, iban, new_balance, changed_by, from_to, description "
    "FROM cmt_balance_changed WHERE cmt_uuid = ANY(CAST(:ids AS uuid[])) ORDER BY cmt_uuid, seq"
)
_LOCK_ACCOUNTS = text(
    "SELECT username, iban, token, amount, lmt FROM balance "
    "WHERE iban = ANY(CAST(:ibans AS text[])) ORDER BY iban FOR UPDATE"
)
_OPEN_ACCOUNT = text(
    "INSERT INTO balance (username, iban, token) VALUES (:u, :i, :t) ON CONFLICT (iban) DO NOTHING RETURNING amount, lmt"
)
# What a batch did, written by one statement of data-modifying CTEs (each runs exactly once, to completion):
# the new amounts, the creations' and transfers' outcomes and the transfers' events. Built for the parts a
# batch has (one statement per combination of parts, 15 at most).
_WRITES = {
    "amounts": (
        "UPDATE balance AS b SET amount = u.amount "
        "FROM unnest(CAST(:a_ibans AS text[]), CAST(:a_amounts AS bigint[])) AS u(iban, amount) "
        "WHERE b.iban = u.iban"
    ),
    "creations": (
        "UPDATE cac AS c SET username = u.username, iban = u.iban, token = u.token, reason = u.reason "
        "FROM unnest(CAST(:c_ids AS uuid[]), CAST(:c_usernames AS text[]), CAST(:c_ibans AS text[]), "
        "CAST(:c_tokens AS text[]), CAST(:c_reasons AS text[])) AS u(uuid, username, iban, token, reason) "
        "WHERE c.uuid = u.uuid"
    ),
    "failures": (
        "UPDATE cmt AS c SET reason = u.reason "
        "FROM unnest(CAST(:t_ids AS uuid[]), CAST(:t_reasons AS text[])) AS u(uuid, reason) "
        "WHERE c.uuid = u.uuid"
    ),
    "events": (
        "INSERT INTO cmt_balance_changed "
        "(cmt_uuid, seq, username, iban, new_balance, changed_by, from_to, description) "
        "SELECT * FROM unnest(CAST(:e_ids AS uuid[]), CAST(:e_seqs AS smallint[]), CAST(:e_usernames AS text[]), "
        "CAST(:e_ibans AS text[]), CAST(:e_balances AS bigint[]), CAST(:e_changes AS bigint[]), "
        "CAST(:e_from_tos AS text[]), CAST(:e_descriptions AS text[]))"
    ),
}


@lru_cache(maxsize=2 ** len(_WRITES))
def _writes(parts: tuple[str, ...]) -> TextClause:
    return text("WITH " + ", ".join(f"{part} AS ({_WRITES[part]})" for part in parts) + " SELECT 1")


class PostgresLedger:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- idempotency claims -----------------------------------------------------

    # Each claim inserts a row for each id not handled before and returns the ids claimed now. An id that
    # another transaction has claimed but not committed makes it wait for that transaction: then it is
    # either handled (not returned) or rolled back (claimed here).

    def claim_creations(self, ids: Iterable[UUID]) -> set[UUID]:
        ordered = sorted(set(ids))
        if not ordered:
            return set()
        return {r[0] for r in self.conn.execute(_CLAIM_CREATIONS, {"ids": ordered})}

    def claim_transfers(self, claims: Mapping[UUID, Source | None]) -> set[UUID]:
        if not claims:
            return set()
        sources = list(claims.values())
        params = {
            "ids": list(claims),
            "topics": [s.topic if s else None for s in sources],
            "partitions": [s.partition if s else None for s in sources],
            "offsets": [s.offset if s else None for s in sources],
        }
        return {r[0] for r in self.conn.execute(_CLAIM_TRANSFERS, params)}

    def creation_outcomes(self, ids: Iterable[UUID]) -> dict[UUID, Outcome]:
        ids = list(ids)
        if not ids:
            return {}
        rows = self.conn.execute(_CREATION_OUTCOMES, {"ids": ids})
        return {r[0]: _creation_outcome(r[0], r[1], r[2], r[3]) for r in rows}

    def transfer_outcomes(self, ids: Iterable[UUID]) -> dict[UUID, tuple[Outcome, Source | None]]:
        ids = list(ids)
        if not ids:
            return {}
        rows = self.conn.execute(_TRANSFER_OUTCOMES, {"ids": ids}).all()
        reasons: dict[UUID, str | None] = {r[0]: r[1] for r in rows}
        sources = {r[0]: Source(r[2], r[3], r[4]) if r[2] is not None else None for r in rows}
        events: dict[UUID, list[BalanceChanged]] = defaultdict(list)
        for r in self.conn.execute(_TRANSFER_EVENTS, {"ids": ids}):
            events[r[0]].append(BalanceChanged(*r[1:]))
        return {
            i: (_transfer_outcome(i, reason, tuple(events.get(i, ()))), sources[i]) for i, reason in reasons.items()
        }

    # -- balances ---------------------------------------------------------------

    def lock_accounts(self, ibans: Iterable[str]) -> dict[str, Account]:
        ordered = sorted(set(ibans))
        if not ordered:
            return {}
        rows = self.conn.execute(_LOCK_ACCOUNTS, {"ibans": ordered})
        return {r[1]: Account(r[0], r[1], r[2], r[3], r[4]) for r in rows}

    def open_account(self, username: str, iban: str, token: str) -> Account | None:
        """Insert a new account; None when the IBAN is taken already."""
        row = self.conn.execute(_OPEN_ACCOUNT, {"u": username, "i": iban, "t": token}).first()
        return None if row is None else Account(username, iban, token, row[0], row[1])

    # -- what the batch did --------------------------------------------------------

    def record(self, accounts: Sequence[Account], creations: CreationOutcomes, transfers: TransferOutcomes) -> None:
        """One round trip for all of it, whatever the batch's size and mix."""
        parts: dict[str, dict[str, list[object]]] = {}
        if accounts:
            parts["amounts"] = {"a_ibans": [a.iban for a in accounts], "a_amounts": [a.amount for a in accounts]}
        if creations:
            rows = [(c.id, rules.storable(c.username), *_creation_columns(o)) for c, o in creations]
            names = ("c_ids", "c_usernames", "c_ibans", "c_tokens", "c_reasons")
            parts["creations"] = {
                name: list(column) for name, column in zip(names, zip(*rows, strict=True), strict=True)
            }
        failures = [(i, o.reason) for i, o in transfers if o.reason is not None]
        if failures:
            parts["failures"] = {"t_ids": [i for i, _ in failures], "t_reasons": [r for _, r in failures]}
        events = [(i, seq, e) for i, o in transfers for seq, e in enumerate(o.events)]
        if events:
            parts["events"] = {
                "e_ids": [i for i, _, _ in events],
                "e_seqs": [seq for _, seq, _ in events],
                "e_usernames": [e.username for _, _, e in events],
                "e_ibans": [e.iban for _, _, e in events],
                "e_balances": [e.new_balance for _, _, e in events],
                "e_changes": [e.changed_by for _, _, e in events],
                "e_from_tos": [e.from_to for _, _, e in events],
                "e_descriptions": [e.description for _, _, e in events],
            }
        if parts:
            params = {name: values for part in parts.values() for name, values in part.items()}
            self.conn.execute(_writes(tuple(parts)), params)


def _creation_columns(outcome: Outcome) -> tuple[str | None, str | None, str | None]:
    """(iban, token, reason) of a ``cac`` row."""
    feedback = outcome.feedback
    if isinstance(feedback, AccountCreationConfirmed):
        return feedback.iban, feedback.token, None
    return None, None, outcome.reason


def _creation_outcome(command_id: UUID, iban: str | None, token: str | None, reason: str | None) -> Outcome:
    if reason is not None or iban is None or token is None:
        return Outcome(AccountCreationFailed(command_id, reason or rules.IBAN_EXISTS))
    return Outcome(AccountCreationConfirmed(command_id, iban, token))


def _transfer_outcome(command_id: UUID, reason: str | None, events: tuple[BalanceChanged, ...]) -> Outcome:
    if reason is not None:
        return Outcome(MoneyTransferFailed(command_id, reason))
    return Outcome(MoneyTransferConfirmed(command_id), events)
