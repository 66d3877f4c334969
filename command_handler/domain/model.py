"""Commands, answers and events, as plain values. Field names follow the Avro records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from uuid import UUID


@dataclass(frozen=True, slots=True)
class ConfirmAccountCreation:
    id: UUID
    username: str


@dataclass(frozen=True, slots=True)
class ConfirmMoneyTransfer:
    id: UUID
    token: str
    amount: int
    from_: str  # "from" in the record
    to: str
    description: str


Command = ConfirmAccountCreation | ConfirmMoneyTransfer


PartitionId = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record is: the one position type of the project. A redelivery of the same record has the
    same source; a client that retries sends a new record (another source) with the same command id."""

    topic: str
    partition: int
    offset: int

    @property
    def partition_id(self) -> PartitionId:
        return (self.topic, self.partition)

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


Header = tuple[str, bytes | None]


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed record, as the pipeline sees it: no client library's type."""

    source: Source
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A record to write."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()

    def size(self) -> int:
        """Bytes of key, value and headers (what a producer's message size limit counts, less overhead)."""
        return (
            len(self.key or b"")
            + len(self.value or b"")
            + sum(len(name) + len(value or b"") for name, value in self.headers)
        )


@dataclass(frozen=True, slots=True)
class AccountCreationConfirmed:
    id: UUID
    iban: str
    token: str


@dataclass(frozen=True, slots=True)
class AccountCreationFailed:
    id: UUID
    reason: str


@dataclass(frozen=True, slots=True)
class MoneyTransferConfirmed:
    id: UUID


@dataclass(frozen=True, slots=True)
class MoneyTransferFailed:
    id: UUID
    reason: str


@dataclass(frozen=True, slots=True)
class BalanceChanged:
    username: str  # the Kafka key: the owner of the account; not a field of the record
    iban: str
    new_balance: int
    changed_by: int
    from_to: str
    description: str


Feedback = AccountCreationConfirmed | AccountCreationFailed | MoneyTransferConfirmed | MoneyTransferFailed


@dataclass(frozen=True, slots=True)
class Outcome:
    """Everything one command produces: its answer and the balance changes it caused.

    It is also what the ledger stores of a handled command, so that a command
    id seen again is answered exactly as the first time.
    """

    feedback: Feedback
    events: tuple[BalanceChanged, ...] = ()

    def feedback_only(self) -> Outcome:
        """The answer without the events: for a new record whose command id was handled before."""
        return Outcome(self.feedback)

    def with_balances(self, current: Mapping[str, int]) -> Outcome:
        """The outcome with each event's ``new_balance`` set to the account's ``current`` balance: for an
        outcome sent again after later changes of its accounts, so no reader sees a balance go back."""
        events = tuple(replace(e, new_balance=current.get(e.iban, e.new_balance)) for e in self.events)
        return Outcome(self.feedback, events)

    @property
    def reason(self) -> str | None:
        """Why the command failed, or None when it was confirmed."""
        if isinstance(self.feedback, AccountCreationFailed | MoneyTransferFailed):
            return self.feedback.reason
        return None
