"""Handling commands: idempotency, validation against balances, and the stored outcome, atomically.

One call to ``CommandService.handle`` is one database transaction for a whole
batch of commands: the idempotency claims, the balance changes and the stored
outcomes commit together or not at all. A command id seen before is answered
from what its first attempt stored, so a replay re-sends the same answer and the
same BalanceChanged events and changes nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from uuid import UUID

from command_handler.domain import rules
from command_handler.domain.iban import new_iban
from command_handler.domain.model import (
    AccountCreationConfirmed,
    AccountCreationFailed,
    Command,
    ConfirmAccountCreation,
    ConfirmMoneyTransfer,
    Outcome,
    Source,
)
from command_handler.domain.rules import Account
from command_handler.domain.tokens import new_token
from command_handler.errors import Conflict, Rejected
from command_handler.service_layer.ports import Ledger, UnitOfWork

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 20


class CommandService:
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        iban_source: Callable[[], str] = new_iban,
        token_source: Callable[[], str] = new_token,
        on_conflict: Callable[[], None] = lambda: None,
    ) -> None:
        self.uow_factory = uow_factory
        self.iban_source = iban_source
        self.token_source = token_source
        self.on_conflict = on_conflict  # told of every conflict retried (a metric)

    def handle(self, commands: Sequence[Command], sources: Sequence[Source | None] | None = None) -> list[Outcome]:
        """Handle a batch in one transaction, retrying deadlocks and serialization failures.

        ``sources`` are the records the commands were read from (None: not known). A transfer
        handled before is answered with its stored outcome: in full (feedback and events) when it
        comes from the very record it was first handled from (a redelivery), else the feedback only
        (a client's retry, which must not show the customer the transfer twice).

        Raises ``Unavailable`` when the database cannot be reached and ``Rejected``
        when it refuses the batch for good (use ``handle_isolated`` to find the culprit).
        """
        origins = list(sources) if sources is not None else [None] * len(commands)
        for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
            try:
                with self.uow_factory() as uow:
                    return self._apply(uow.ledger, commands, origins)
            except Conflict as err:
                if attempt == MAX_CONFLICT_RETRIES:
                    raise
                self.on_conflict()
                log.info("transaction conflict (%s), retry %d of the batch of %d", err, attempt, len(commands))
                time.sleep(random.uniform(0, 0.005 * attempt))
        raise AssertionError("unreachable")

    def handle_isolated(
        self, commands: Sequence[Command], sources: Sequence[Source | None] | None = None
    ) -> list[Outcome | Rejected]:
        """Like ``handle``, but a command the database refuses is returned as its ``Rejected`` error
        while the others are handled (one transaction each, only after the batch was refused)."""
        origins = list(sources) if sources is not None else [None] * len(commands)
        try:
            return list(self.handle(commands, origins))
        except Rejected as err:
            if len(commands) == 1:
                return [err]
            log.warning("batch of %d refused by the database (%s): handling one by one", len(commands), err)
        results: list[Outcome | Rejected] = []
        for command, source in zip(commands, origins, strict=True):
            try:
                results.extend(self.handle([command], [source]))
            except Rejected as err:
                results.append(err)
        return results

    def _apply(self, ledger: Ledger, commands: Sequence[Command], sources: Sequence[Source | None]) -> list[Outcome]:
        creations = [c for c in commands if isinstance(c, ConfirmAccountCreation)]
        transfers = [c for c in commands if isinstance(c, ConfirmMoneyTransfer)]
        # the record each transfer id is handled from: its first in the batch (a second is a replay)
        claims: dict[UUID, Source | None] = {}
        for c, s in zip(commands, sources, strict=True):
            if isinstance(c, ConfirmMoneyTransfer):
                claims.setdefault(c.id, s)
        # Locks in the ledger's global order: creation claims, transfer claims, accounts.
        new_creations = ledger.claim_creations(c.id for c in creations)
        new_transfers = ledger.claim_transfers(claims)
        known_creations = ledger.creation_outcomes({c.id for c in creations} - new_creations)
        known_transfers = ledger.transfer_outcomes(claims.keys() - new_transfers)
        # a redelivered record's events go out again with their accounts' balances as they are now
        resent = {
            e.iban
            for c, s in zip(commands, sources, strict=True)
            if isinstance(c, ConfirmMoneyTransfer)
            and c.id in known_transfers
            and s is not None
            and s == known_transfers[c.id][1]
            for e in known_transfers[c.id][0].events
        }
        accounts = ledger.lock_accounts(
            [*(iban for t in transfers if t.id in new_transfers for iban in rules.transfer_accounts(t)), *resent]
        )

        changed: dict[str, Account] = {}
        created: list[tuple[ConfirmAccountCreation, Outcome]] = []
        transferred: list[tuple[UUID, Outcome]] = []
        seen: dict[tuple[type, UUID], tuple[Outcome, Source | None]] = {}
        results: list[Outcome] = []
        for command, source in zip(commands, sources, strict=True):
            key = (type(command), command.id)
            replay = True  # handled before: answered with what its first attempt stored
            if key in seen:  # the same id twice in one batch
                outcome, first = seen[key]
            elif isinstance(command, ConfirmAccountCreation) and command.id in new_creations:
                outcome, first, replay = self._open_account(ledger, command, accounts), source, False
                created.append((command, outcome))
            elif isinstance(command, ConfirmMoneyTransfer) and command.id in new_transfers:
                outcome, first, replay = rules.decide_transfer(command, accounts), source, False
                for event in outcome.events:
                    changed[event.iban] = accounts[event.iban]
                transferred.append((command.id, outcome))
            elif isinstance(command, ConfirmAccountCreation):
                outcome, first = known_creations[command.id], None
            else:
                outcome, first = known_transfers[command.id]
            seen.setdefault(key, (outcome, first))
            if replay and (source is None or source != first):
                outcome = outcome.feedback_only()  # a new record with a handled id: no second BalanceChanged
            elif replay and outcome.events:  # a redelivery: the events again, never an older balance
                outcome = outcome.with_balances({iban: a.amount for iban, a in accounts.items()})
            results.append(outcome)

        ledger.record(list(changed.values()), created, transferred)
        return results

    def _open_account(self, ledger: Ledger, command: ConfirmAccountCreation, accounts: dict[str, Account]) -> Outcome:
        problem = rules.account_creation_problem(command)
        if problem:
            return Outcome(AccountCreationFailed(command.id, problem))
        for _ in range(rules.IBAN_ATTEMPTS):
            account = ledger.open_account(command.username, self.iban_source(), self.token_source())
            if account is not None:
                accounts[account.iban] = account
                return Outcome(AccountCreationConfirmed(command.id, account.iban, account.token))
        log.warning("account creation %s: %d generated IBANs all existed", command.id, rules.IBAN_ATTEMPTS)
        return Outcome(AccountCreationFailed(command.id, rules.IBAN_EXISTS))
