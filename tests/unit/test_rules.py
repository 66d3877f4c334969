"""The transfer and account-creation rules of the contract, row by row."""

from uuid import uuid4

import pytest

from command_handler.domain import rules
from command_handler.domain.iban import BANK_IBAN, iban_for
from command_handler.domain.model import (
    BalanceChanged,
    ConfirmAccountCreation,
    ConfirmMoneyTransfer,
    MoneyTransferConfirmed,
    MoneyTransferFailed,
)
from command_handler.domain.rules import Account, decide_transfer

ALICE = iban_for("0000000001")
BOB = iban_for("0000000002")
FOREIGN = iban_for("0999999999")  # valid open-bank IBAN, no account here


def accounts() -> dict[str, rules.Account]:
    return {
        ALICE: Account("alice", ALICE, "a" * 20, amount=1000),
        BOB: Account("bob", BOB, "b" * 20, amount=0),
    }


def transfer(
    frm: str, to: str, amount: int = 100, token: str = "a" * 20, description: str = "d"
) -> ConfirmMoneyTransfer:
    return ConfirmMoneyTransfer(uuid4(), token, amount, frm, to, description)


def reason(cmd: ConfirmMoneyTransfer, accts: dict[str, Account] | None = None) -> str | None:
    outcome = decide_transfer(cmd, accts if accts is not None else accounts())
    return outcome.feedback.reason if isinstance(outcome.feedback, MoneyTransferFailed) else None


def test_transfer_between_two_accounts_debits_and_credits() -> None:
    accts = accounts()
    cmd = transfer(ALICE, BOB, 300, description="rent")
    outcome = decide_transfer(cmd, accts)
    assert outcome.feedback == MoneyTransferConfirmed(cmd.id)
    assert outcome.events == (
        BalanceChanged("alice", ALICE, 700, -300, BOB, "rent"),
        BalanceChanged("bob", BOB, 300, 300, ALICE, "rent"),
    )
    assert (accts[ALICE].amount, accts[BOB].amount) == (700, 300)


def test_cash_deposit_credits_only_the_receiver() -> None:
    accts = accounts()
    outcome = decide_transfer(transfer("cash", BOB, 2000, token="whatever"), accts)
    assert outcome.events == (BalanceChanged("bob", BOB, 2000, 2000, "cash", "d"),)


def test_money_from_outside_credits_the_receiver() -> None:
    outcome = decide_transfer(transfer(FOREIGN, BOB, 50, token=""), accounts())
    assert isinstance(outcome.feedback, MoneyTransferConfirmed)
    assert outcome.events == (BalanceChanged("bob", BOB, 50, 50, FOREIGN, "d"),)


def test_money_leaving_the_bank_debits_only_the_sender() -> None:
    outcome = decide_transfer(transfer(ALICE, FOREIGN, 10), accounts())
    assert outcome.events == (BalanceChanged("alice", ALICE, 990, -10, FOREIGN, "d"),)


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        (transfer("NL00OPEN0000000001", BOB), rules.FROM_INVALID),
        (transfer("nonsense", BOB), rules.FROM_INVALID),
        (transfer(ALICE, ALICE), rules.SAME_ACCOUNTS),
        (transfer("cash", "cash"), rules.SAME_ACCOUNTS),
        (transfer(ALICE, BOB, token="wrong"), rules.INVALID_TOKEN),
        (transfer(ALICE, BOB, amount=51_001), rules.INSUFFICIENT_FUNDS),
        (transfer("cash", FOREIGN), rules.BOTH_UNKNOWN),
        (transfer(FOREIGN, "NL12OPEN0999999998"), rules.BOTH_UNKNOWN),
        (transfer(ALICE, BOB, amount=0), rules.AMOUNT_NOT_POSITIVE),
        (transfer(ALICE, BOB, amount=-5), rules.AMOUNT_NOT_POSITIVE),
        (transfer("cash", "", amount=5), rules.TO_INVALID),
        (transfer(ALICE, BOB, description="x" * 1001), "description is too long (at most 1000 characters)"),
        (transfer(ALICE, "x" * 101), "to is too long (at most 100 characters)"),
        (transfer(ALICE, BOB, description="a\x00b"), "description contains a NUL character"),
    ],
)
def test_failures_with_the_exact_reasons(cmd: ConfirmMoneyTransfer, expected: str) -> None:
    accts = accounts()
    assert reason(cmd, accts) == expected
    assert (accts[ALICE].amount, accts[BOB].amount) == (1000, 0)  # nothing changed


def test_checks_are_made_in_the_contract_order() -> None:
    # invalid from wins over same accounts and bad amount
    assert reason(transfer("bad", "bad", amount=-1)) == rules.FROM_INVALID
    # same accounts wins over a bad token
    assert reason(transfer(ALICE, ALICE, token="wrong")) == rules.SAME_ACCOUNTS
    # a bad token wins over insufficient funds
    assert reason(transfer(ALICE, BOB, amount=10**9, token="wrong")) == rules.INVALID_TOKEN


def test_the_limit_is_inclusive() -> None:
    accts = accounts()
    assert reason(transfer(ALICE, BOB, amount=51_000), accts) is None
    assert accts[ALICE].amount == -50_000
    assert reason(transfer(ALICE, BOB, amount=1), accts) == rules.INSUFFICIENT_FUNDS


def test_bank_account_is_an_ordinary_receiver() -> None:
    accts = {**accounts(), BANK_IBAN: Account("open_web", BANK_IBAN, "0" * 20, 10**17)}
    outcome = decide_transfer(transfer(ALICE, BANK_IBAN, 1111), accts)
    assert [e.iban for e in outcome.events] == [ALICE, BANK_IBAN]


def test_transfer_accounts_lists_only_valid_ibans_sorted() -> None:
    assert rules.transfer_accounts(transfer(BOB, ALICE)) == tuple(sorted((ALICE, BOB)))
    assert rules.transfer_accounts(transfer("cash", BOB)) == (BOB,)


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        ("alice", None),
        ("", rules.USERNAME_EMPTY),
        ("   ", rules.USERNAME_EMPTY),
        ("x" * 101, "username is too long (at most 100 characters)"),
        ("a\x00", "username contains a NUL character"),
    ],
)
def test_account_creation_problems(username: str, expected: str | None) -> None:
    assert rules.account_creation_problem(ConfirmAccountCreation(uuid4(), username)) == expected
