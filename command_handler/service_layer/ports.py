"""What the service layer needs from the outside, as Protocols: the ledger and its unit of work, the
topic administration and the schema registry (``adapters.kafka_admin``, ``adapters.schema_registry``),
the source of command records (``adapters.kafka_consumer``), the telemetry (``adapters.metrics``) and
the readiness state (``adapters.health``). The output port is ``delivery.Output``.

``adapters.ledger`` implements them on PostgreSQL; the unit tests implement
them in memory. Implementations raise the project's own ``Conflict``,
``Unavailable`` and ``Rejected`` (``command_handler.errors``), never a driver's
exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Protocol, runtime_checkable
from uuid import UUID

from command_handler.domain.model import ConfirmAccountCreation, Outcome, PartitionId, Record, Source
from command_handler.domain.rules import Account

# what a batch did, as Ledger.record stores it: each new account creation with its outcome, and each new
# transfer's id with its outcome (feedback and events)
CreationOutcomes = Sequence[tuple[ConfirmAccountCreation, Outcome]]
TransferOutcomes = Sequence[tuple[UUID, Outcome]]


@runtime_checkable
class Ledger(Protocol):
    """Accounts and the stored outcomes of handled commands, inside one transaction.

    Locks are taken in one global order: creation claims, then transfer claims
    (each by id), then accounts (by IBAN); callers keep to it.
    """

    def claim_creations(self, ids: Iterable[UUID]) -> set[UUID]:
        """Claim the account creations not handled before; the ids claimed now (waits for a concurrent claim)."""
        ...

    def claim_transfers(self, claims: Mapping[UUID, Source | None]) -> set[UUID]:
        """Claim the transfers not handled before, each with the record it is handled from now (None when
        that is not known; stored with the claim, so that a confirmed transfer's row is written once); the ids
        claimed now (waits for a concurrent claim)."""
        ...

    def creation_outcomes(self, ids: Iterable[UUID]) -> dict[UUID, Outcome]:
        """The stored outcomes of account creations handled before."""
        ...

    def transfer_outcomes(self, ids: Iterable[UUID]) -> dict[UUID, tuple[Outcome, Source | None]]:
        """The stored outcomes of transfers handled before, with their BalanceChanged events, and the
        record each was first handled from (None when that is not known)."""
        ...

    def lock_accounts(self, ibans: Iterable[str]) -> dict[str, Account]:
        """The accounts of these IBANs that exist, locked until the transaction ends."""
        ...

    def open_account(self, username: str, iban: str, token: str) -> Account | None:
        """A new account, or None when the IBAN is taken already."""
        ...

    def record(self, accounts: Sequence[Account], creations: CreationOutcomes, transfers: TransferOutcomes) -> None:
        """Store what the batch did: the new amounts of these accounts, and the outcomes of the account
        creations and transfers claimed in this transaction (a transfer's with its events)."""
        ...


class UnitOfWork(Protocol):
    """One transaction: commits when the block ends normally, rolls back otherwise."""

    @property
    def ledger(self) -> Ledger: ...

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class TopicAdmin(Protocol):
    def broker_count(self) -> int: ...

    def topics(self) -> dict[str, int]:
        """Topic name -> partition count, internal topics left out."""
        ...

    def create_topic(self, name: str, partitions: int, replication: int, config: dict[str, str]) -> bool:
        """Create a topic; False when it existed already."""
        ...

    def wait_listed(self, names: list[str], timeout_s: float = 30) -> None:
        """Until the broker's metadata lists every topic of ``names``."""
        ...

    def delete_topic(self, name: str) -> None: ...


class SchemaRegistry(Protocol):
    def lookup(self, subject: str, schema_str: str) -> int | None:
        """The id of ``schema_str`` under ``subject``, or None when it is not registered there."""
        ...

    def register(self, subject: str, schema_str: str) -> int:
        """Register ``schema_str`` under ``subject``; IncompatibleSchema when refused."""
        ...


class Telemetry(Protocol):
    """What the consumer loop counts and times (Prometheus metrics in production)."""

    def command(self, kind: str, outcome: str) -> None: ...

    def dead_lettered(self, kind: str) -> None: ...

    def batch(self, size: int, seconds: float) -> None: ...

    def db_retry(self, kind: str) -> None: ...

    def delivered(self, seconds: float) -> None: ...

    def released(self, partitions: list[int]) -> None: ...

    def watch_queue(self, depth: Callable[[], int]) -> None: ...


class Readiness(Protocol):
    """The health state the loop keeps up to date: a heartbeat, ready or not, and why."""

    ready: bool
    reason: str

    def beat(self) -> None: ...


class RebalanceListener(Protocol):
    """Told of the group's rebalances, from inside ``CommandSource.poll``."""

    def assigned(self, partitions: set[PartitionId]) -> bool:
        """New partitions; True when they are to start paused (a dependency is being waited for)."""
        ...

    def revoked(self, partitions: set[PartitionId]) -> None:
        """Taken away in order: what is done may still be committed."""
        ...

    def lost(self, partitions: set[PartitionId]) -> None:
        """Taken away without a chance to commit."""
        ...


class CommandSource(Protocol):
    """The consumer of the command topic, in the pipeline's terms."""

    def subscribe(self, listener: RebalanceListener) -> None: ...

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first; serves rebalances."""
        ...

    def assignment(self) -> set[PartitionId]: ...

    def pause(self, partitions: Iterable[PartitionId]) -> None: ...

    def resume(self, partitions: Iterable[PartitionId]) -> None: ...

    def rewind(self, source: Source) -> None:
        """Consume again from ``source`` (a record put back: its partition was held or paused)."""
        ...

    def store(self, offsets: dict[PartitionId, int]) -> None:
        """Next offsets that may be committed; the source commits what was stored at a bounded rate."""
        ...

    def commit(self) -> None:
        """Commit what was stored, now and synchronously (a revoke)."""
        ...

    def group_metadata(self) -> object:
        """The group's metadata, for a transaction's offsets (fencing of zombies, KIP-447)."""
        ...

    def close(self) -> None:
        """Commit what was stored and leave the group."""
        ...
