"""An in-memory ledger and unit of work for the command service's unit tests.

It keeps the ledger's contract (``service_layer.ports``): claims, stored
outcomes, accounts with a unique IBAN, all or nothing per unit of work. It can
also be told to fail: a number of conflicts before a transaction succeeds, or
a refusal of every transaction that touches a given command id (as a database
refuses a value it cannot store).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from uuid import UUID

from command_handler.domain import rules
from command_handler.domain.iban import BANK_IBAN
from command_handler.domain.model import Outcome, Source
from command_handler.domain.rules import Account
from command_handler.errors import Conflict, Rejected
from command_handler.service_layer.ports import CreationOutcomes, TransferOutcomes

BANK_SEED = 100_000_000_000_000_000


@dataclass
class State:
    accounts: dict[str, Account] = field(default_factory=dict)
    creations: dict[UUID, Outcome | None] = field(default_factory=dict)  # None: claimed, outcome not recorded
    transfers: dict[UUID, Outcome | None] = field(default_factory=dict)
    sources: dict[UUID, Source | None] = field(default_factory=dict)
    usernames: dict[UUID, str] = field(default_factory=dict)


class InMemoryLedger:
    def __init__(self, state: State, refuse: set[UUID]) -> None:
        self.state = state
        self.refuse = refuse

    def _check(self, ids: Iterable[UUID]) -> None:
        refused = sorted(str(i) for i in set(ids) & self.refuse)
        if refused:
            raise Rejected(f"22000: refused value of {refused[0]}")

    def claim_creations(self, ids: Iterable[UUID]) -> set[UUID]:
        return self._claim(self.state.creations, ids)

    def claim_transfers(self, claims: Mapping[UUID, Source | None]) -> set[UUID]:
        new = self._claim(self.state.transfers, claims)
        for i in new:
            self.state.sources[i] = claims[i]
        return new

    def _claim(self, table: dict[UUID, Outcome | None], ids: Iterable[UUID]) -> set[UUID]:
        ids = set(ids)
        self._check(ids)
        new = {i for i in ids if i not in table}
        for i in new:
            table[i] = None
        return new

    def creation_outcomes(self, ids: Iterable[UUID]) -> dict[UUID, Outcome]:
        return {i: o for i in ids if (o := self.state.creations.get(i)) is not None}

    def transfer_outcomes(self, ids: Iterable[UUID]) -> dict[UUID, tuple[Outcome, Source | None]]:
        return {i: (o, self.state.sources.get(i)) for i in ids if (o := self.state.transfers.get(i)) is not None}

    def lock_accounts(self, ibans: Iterable[str]) -> dict[str, Account]:
        return {i: copy.copy(self.state.accounts[i]) for i in sorted(set(ibans)) if i in self.state.accounts}

    def open_account(self, username: str, iban: str, token: str) -> Account | None:
        if iban in self.state.accounts:
            return None
        account = Account(username, iban, token, 0, rules.DEFAULT_LIMIT)
        self.state.accounts[iban] = copy.copy(account)
        return account

    def record(self, accounts: Sequence[Account], creations: CreationOutcomes, transfers: TransferOutcomes) -> None:
        for account in accounts:
            self.state.accounts[account.iban].amount = account.amount
        for command, outcome in creations:
            assert self.state.creations[command.id] is None, "recorded only once, after its claim"
            self.state.creations[command.id] = outcome
            self.state.usernames[command.id] = command.username
        for command_id, outcome in transfers:
            assert self.state.transfers[command_id] is None, "recorded only once, after its claim"
            self.state.transfers[command_id] = outcome


class InMemoryBank:
    """The committed state, and units of work on it."""

    def __init__(self) -> None:
        self.state = State()
        self.state.accounts[BANK_IBAN] = Account("open_web", BANK_IBAN, "0" * 20, BANK_SEED)
        self.conflicts_to_raise = 0
        self.refuse: set[UUID] = set()
        self.commits = 0
        self.rollbacks = 0

    def unit_of_work(self) -> InMemoryUnitOfWork:
        return InMemoryUnitOfWork(self)


class InMemoryUnitOfWork:
    def __init__(self, bank: InMemoryBank) -> None:
        self.bank = bank
        self._ledger: InMemoryLedger | None = None

    @property
    def ledger(self) -> InMemoryLedger:
        assert self._ledger is not None, "inside the with block only"
        return self._ledger

    def __enter__(self) -> InMemoryUnitOfWork:
        # work on a copy: committed only when the block ends normally
        self._ledger = InMemoryLedger(copy.deepcopy(self.bank.state), self.bank.refuse)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None and self.bank.conflicts_to_raise:
            self.bank.conflicts_to_raise -= 1
            self.bank.rollbacks += 1
            raise Conflict("40P01: deadlock detected (injected)")
        if exc is None:
            self.bank.state = self.ledger.state
            self.bank.commits += 1
        else:
            self.bank.rollbacks += 1
