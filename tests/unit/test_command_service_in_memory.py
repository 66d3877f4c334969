"""The command service on an in-memory ledger: every rule path, replays, duplicates in one batch,
conflicts retried and refused commands isolated. No broker, registry or database is needed."""

from collections.abc import Iterator
from itertools import count
from uuid import UUID, uuid4

import pytest

from command_handler.domain import rules
from command_handler.domain.iban import BANK_IBAN, iban_for
from command_handler.domain.model import (
    AccountCreationConfirmed,
    AccountCreationFailed,
    BalanceChanged,
    ConfirmAccountCreation,
    ConfirmMoneyTransfer,
    MoneyTransferConfirmed,
    MoneyTransferFailed,
    Outcome,
    Source,
)
from command_handler.errors import Conflict, Rejected
from command_handler.service_layer import commands as commands_module
from command_handler.service_layer.commands import CommandService
from command_handler.service_layer.ports import Ledger

from .memory_ledger import BANK_SEED, InMemoryBank, InMemoryLedger, State


def sequential_ibans() -> Iterator[str]:
    for n in count(1):
        yield iban_for(f"{n:010d}")


@pytest.fixture
def bank() -> InMemoryBank:
    return InMemoryBank()


@pytest.fixture
def service(bank: InMemoryBank) -> CommandService:
    ibans = sequential_ibans()
    tokens = (f"{n:020d}" for n in count(1))
    return CommandService(bank.unit_of_work, iban_source=lambda: next(ibans), token_source=lambda: next(tokens))


def open_account(service: CommandService, username: str = "alice") -> AccountCreationConfirmed:
    (outcome,) = service.handle([ConfirmAccountCreation(uuid4(), username)])
    assert isinstance(outcome.feedback, AccountCreationConfirmed)
    return outcome.feedback


def transfer(amount: int, from_: str, to: str, token: str = "", command_id: UUID | None = None) -> ConfirmMoneyTransfer:
    return ConfirmMoneyTransfer(command_id or uuid4(), token, amount, from_, to, "test")


def amounts(bank: InMemoryBank) -> dict[str, int]:
    return {iban: a.amount for iban, a in bank.state.accounts.items()}


def test_the_in_memory_ledger_is_a_ledger() -> None:
    assert isinstance(InMemoryLedger(State(), set()), Ledger)


def test_account_creation_confirms_with_iban_and_token_and_stores_the_answer(
    service: CommandService, bank: InMemoryBank
) -> None:
    command = ConfirmAccountCreation(uuid4(), "alice")
    (outcome,) = service.handle([command])
    assert outcome == Outcome(AccountCreationConfirmed(command.id, iban_for("0000000001"), "0" * 19 + "1"))
    assert bank.state.accounts[iban_for("0000000001")].username == "alice"
    assert bank.state.creations[command.id] == outcome and bank.state.usernames[command.id] == "alice"


def test_account_creation_replay_answers_the_same_and_opens_nothing(
    service: CommandService, bank: InMemoryBank
) -> None:
    command = ConfirmAccountCreation(uuid4(), "alice")
    first = service.handle([command])
    before = amounts(bank)
    assert service.handle([command]) == first
    assert amounts(bank) == before


def test_iban_collisions_try_fresh_ibans_then_fail(bank: InMemoryBank) -> None:
    taken = iban_for("0000000007")
    colliding = CommandService(bank.unit_of_work, iban_source=lambda: taken)
    first = colliding.handle([ConfirmAccountCreation(uuid4(), "a")])[0]
    assert isinstance(first.feedback, AccountCreationConfirmed)
    second = colliding.handle([ConfirmAccountCreation(uuid4(), "b")])[0]
    assert second.reason == rules.IBAN_EXISTS
    ibans = iter([taken, taken, iban_for("0000000008")])
    retrying = CommandService(bank.unit_of_work, iban_source=lambda: next(ibans))
    third = retrying.handle([ConfirmAccountCreation(uuid4(), "c")])[0]
    assert isinstance(third.feedback, AccountCreationConfirmed) and third.feedback.iban.endswith("0000000008")


@pytest.mark.parametrize("username", ["", "   ", "x" * 101, "nul\x00"])
def test_unusable_usernames_fail_with_a_reason(service: CommandService, bank: InMemoryBank, username: str) -> None:
    command = ConfirmAccountCreation(uuid4(), username)
    (outcome,) = service.handle([command])
    assert isinstance(outcome.feedback, AccountCreationFailed) and outcome.reason
    assert len(bank.state.accounts) == 1  # the bank's own only
    assert service.handle([command]) == [outcome]


def test_deposit_then_transfer_between_accounts_changes_both_and_emits_events(
    service: CommandService, bank: InMemoryBank
) -> None:
    alice, bob = open_account(service, "alice"), open_account(service, "bob")
    deposit = transfer(10_000, rules.CASH, alice.iban)
    (deposited,) = service.handle([deposit])
    assert deposited == Outcome(
        MoneyTransferConfirmed(deposit.id), (BalanceChanged("alice", alice.iban, 10_000, 10_000, "cash", "test"),)
    )
    pay = transfer(2_500, alice.iban, bob.iban, alice.token)
    (paid,) = service.handle([pay])
    assert paid.events == (
        BalanceChanged("alice", alice.iban, 7_500, -2_500, bob.iban, "test"),
        BalanceChanged("bob", bob.iban, 2_500, 2_500, alice.iban, "test"),
    )
    assert amounts(bank)[alice.iban] == 7_500 and amounts(bank)[bob.iban] == 2_500


def test_transfer_to_an_iban_of_another_bank_debits_only(service: CommandService, bank: InMemoryBank) -> None:
    alice = open_account(service)
    outside = iban_for("9999999999")
    (outcome,) = service.handle([transfer(100, alice.iban, outside, alice.token)])
    assert outcome.events == (BalanceChanged("alice", alice.iban, -100, -100, outside, "test"),)
    assert outside not in bank.state.accounts


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda a, b: transfer(100, "nowhere", b.iban), rules.FROM_INVALID),
        (lambda a, b: transfer(100, a.iban, a.iban, a.token), rules.SAME_ACCOUNTS),
        (lambda a, b: transfer(100, a.iban, b.iban, "wrong"), rules.INVALID_TOKEN),
        (lambda a, b: transfer(50_001, a.iban, b.iban, a.token), rules.INSUFFICIENT_FUNDS),
        (lambda a, b: transfer(0, a.iban, b.iban, a.token), rules.AMOUNT_NOT_POSITIVE),
        (lambda a, b: transfer(-5, rules.CASH, b.iban), rules.AMOUNT_NOT_POSITIVE),
        (lambda a, b: transfer(100, rules.CASH, iban_for("9999999999")), rules.BOTH_UNKNOWN),
        (lambda a, b: transfer(100, rules.CASH, "  "), rules.TO_INVALID),
    ],
)
def test_failed_transfers_change_nothing_and_are_answered_the_same_again(
    service: CommandService, bank: InMemoryBank, make, reason: str
) -> None:  # type: ignore[no-untyped-def]
    alice, bob = open_account(service, "alice"), open_account(service, "bob")
    before = amounts(bank)
    command = make(alice, bob)
    (outcome,) = service.handle([command])
    assert outcome == Outcome(MoneyTransferFailed(command.id, reason))
    assert amounts(bank) == before
    assert service.handle([command]) == [outcome]


def test_the_limit_is_reached_exactly_but_not_passed(service: CommandService, bank: InMemoryBank) -> None:
    alice, bob = open_account(service, "alice"), open_account(service, "bob")
    (exact,) = service.handle([transfer(50_000, alice.iban, bob.iban, alice.token)])
    assert exact.reason is None and amounts(bank)[alice.iban] == rules.DEFAULT_LIMIT
    (beyond,) = service.handle([transfer(1, alice.iban, bob.iban, alice.token)])
    assert beyond.reason == rules.INSUFFICIENT_FUNDS


def test_a_redelivered_record_gets_its_feedback_and_events_again_and_changes_nothing(
    service: CommandService, bank: InMemoryBank
) -> None:
    alice = open_account(service)
    deposit = transfer(1_000, rules.CASH, alice.iban)
    record = Source("commands", 3, 42)
    first = service.handle([deposit], [record])
    assert first[0].events  # the deposit changed a balance
    before = amounts(bank)
    assert service.handle([deposit], [Source("commands", 3, 42)]) == first
    assert amounts(bank) == before


def test_a_redelivery_after_later_changes_sends_the_balance_as_it_is_now_never_an_older_one(
    service: CommandService, bank: InMemoryBank
) -> None:
    alice = open_account(service)
    deposit = transfer(1_000, rules.CASH, alice.iban)
    (first,) = service.handle([deposit], [Source("commands", 3, 42)])
    assert first.events[0].new_balance == 1_000
    service.handle([transfer(500, rules.CASH, alice.iban)], [Source("commands", 5, 7)])  # a later change
    (again,) = service.handle([deposit], [Source("commands", 3, 42)])  # the first record comes back
    assert again.feedback == first.feedback
    assert again.events[0].changed_by == 1_000 and again.events[0].description == first.events[0].description
    assert again.events[0].new_balance == 1_500  # not 1,000: a reader never sees the balance go back
    assert amounts(bank)[alice.iban] == 1_500


def test_a_retried_transfer_gets_its_feedback_only_and_changes_nothing(
    service: CommandService, bank: InMemoryBank
) -> None:
    alice = open_account(service)
    deposit = transfer(1_000, rules.CASH, alice.iban)
    (first,) = service.handle([deposit], [Source("commands", 3, 42)])
    before = amounts(bank)
    # a client's retry is a new record; other content under the same id is still the same command
    retried = transfer(999_999, rules.CASH, alice.iban, command_id=deposit.id)
    for source in (Source("commands", 3, 43), Source("commands", 7, 42), None):
        assert service.handle([retried], [source]) == [Outcome(first.feedback)]
    assert amounts(bank) == before


def test_a_handled_account_creation_is_answered_the_same_from_any_record(
    service: CommandService, bank: InMemoryBank
) -> None:
    command = ConfirmAccountCreation(uuid4(), "alice")
    first = service.handle([command], [Source("commands", 0, 1)])
    assert service.handle([command], [Source("commands", 0, 9)]) == first
    assert service.handle([command], [Source("commands", 0, 1)]) == first


def test_the_same_id_twice_in_one_batch_is_applied_once(service: CommandService, bank: InMemoryBank) -> None:
    alice = open_account(service)
    deposit = transfer(1_000, rules.CASH, alice.iban)
    creation = ConfirmAccountCreation(uuid4(), "carol")
    results = service.handle([deposit, creation, deposit, creation], [Source("c", 0, n) for n in range(4)])
    assert results[0].events and results[2] == Outcome(results[0].feedback)  # the second record: feedback only
    assert results[1] == results[3]
    assert amounts(bank)[alice.iban] == 1_000
    assert sum(1 for a in bank.state.accounts.values() if a.username == "carol") == 1


def test_a_creation_and_a_transfer_may_share_an_id(service: CommandService, bank: InMemoryBank) -> None:
    alice = open_account(service)
    shared = uuid4()
    creation, deposit = ConfirmAccountCreation(shared, "dave"), transfer(10, rules.CASH, alice.iban, command_id=shared)
    first = service.handle([creation, deposit])
    assert isinstance(first[0].feedback, AccountCreationConfirmed) and first[1].reason is None
    assert service.handle([deposit, creation]) == [first[1].feedback_only(), first[0]]


def test_a_batch_applies_transfers_in_order_against_the_running_balance(
    service: CommandService, bank: InMemoryBank
) -> None:
    alice, bob = open_account(service, "alice"), open_account(service, "bob")
    batch = [transfer(30_000, alice.iban, bob.iban, alice.token) for _ in range(2)]
    first, second = service.handle(batch)
    assert first.reason is None and second.reason == rules.INSUFFICIENT_FUNDS
    assert amounts(bank)[alice.iban] == -30_000 and amounts(bank)[bob.iban] == 30_000


def test_money_is_neither_created_nor_destroyed_between_accounts(service: CommandService, bank: InMemoryBank) -> None:
    people = [open_account(service, f"user{n}") for n in range(4)]
    service.handle([transfer(5_000, rules.CASH, p.iban) for p in people])
    total = sum(amounts(bank).values())
    batch = [transfer(700 * (n + 1), p.iban, q.iban, p.token) for n, p in enumerate(people) for q in people if p != q]
    service.handle(batch)
    assert sum(amounts(bank).values()) == total
    assert amounts(bank)[BANK_IBAN] == BANK_SEED


def test_conflicts_are_retried_until_the_batch_commits(service: CommandService, bank: InMemoryBank) -> None:
    alice = open_account(service)
    bank.conflicts_to_raise = 3
    (outcome,) = service.handle([transfer(1_000, rules.CASH, alice.iban)])
    assert outcome.reason is None
    assert bank.rollbacks == 3 and amounts(bank)[alice.iban] == 1_000  # applied once, after three rollbacks


def test_endless_conflicts_give_up_with_conflict(
    service: CommandService, bank: InMemoryBank, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = open_account(service)
    monkeypatch.setattr(commands_module, "MAX_CONFLICT_RETRIES", 4)
    bank.conflicts_to_raise = 10
    with pytest.raises(Conflict):
        service.handle([transfer(1_000, rules.CASH, alice.iban)])
    assert bank.rollbacks == 4 and amounts(bank)[alice.iban] == 0


def test_a_refused_command_is_isolated_and_the_rest_of_its_batch_is_handled(
    service: CommandService, bank: InMemoryBank
) -> None:
    alice = open_account(service)
    good = [transfer(100 * (n + 1), rules.CASH, alice.iban) for n in range(3)]
    bad = transfer(1, rules.CASH, alice.iban)
    bank.refuse.add(bad.id)
    results = service.handle_isolated([good[0], bad, good[1], good[2]])
    assert isinstance(results[1], Rejected) and str(bad.id) in str(results[1])
    assert [r.reason for r in results if isinstance(r, Outcome)] == [None, None, None]
    assert amounts(bank)[alice.iban] == 600
    assert bad.id not in bank.state.transfers  # nothing of it was stored


def test_a_refused_batch_of_one_is_returned_without_retrying(service: CommandService, bank: InMemoryBank) -> None:
    bad = transfer(1, rules.CASH, BANK_IBAN)
    bank.refuse.add(bad.id)
    (result,) = service.handle_isolated([bad])
    assert isinstance(result, Rejected)
    assert bank.commits == 0 and bank.rollbacks == 1  # one transaction: not tried again on its own
