"""The bank's rules for commands, with no I/O: what a command does to the accounts it names.

The checks, their order and the reason strings are the open-bank contract's;
the checks marked "fix" are this handler's additions (amounts <= 0, sane
lengths, characters Postgres cannot store).
"""

from __future__ import annotations

from dataclasses import dataclass

from command_handler.domain.iban import is_valid_iban
from command_handler.domain.model import (
    BalanceChanged,
    ConfirmAccountCreation,
    ConfirmMoneyTransfer,
    MoneyTransferConfirmed,
    MoneyTransferFailed,
    Outcome,
)

CASH = "cash"
DEFAULT_LIMIT = -50_000
IBAN_ATTEMPTS = 5  # fresh IBANs tried before giving up on collisions (fix)

# Reasons of the reference handlers, word for word.
FROM_INVALID = "from is invalid"
SAME_ACCOUNTS = "from and to can't be same for transfer"
INVALID_TOKEN = "invalid token"
INSUFFICIENT_FUNDS = "insufficient funds"
BOTH_UNKNOWN = "both to and from not known at this bank"
IBAN_EXISTS = "generated iban already exists, try again"
# Reasons of the fixes.
AMOUNT_NOT_POSITIVE = "amount must be a positive number of cents"
BALANCE_OVERFLOW = "the receiving balance would exceed the largest amount an account can hold"
MAX_BALANCE = 2**63 - 1  # the balance column is a bigint
TO_INVALID = "to is invalid"
USERNAME_EMPTY = "username can't be empty"

MAX_LENGTHS = {"username": 100, "token": 100, "from": 100, "to": 100, "description": 1000}


@dataclass
class Account:
    """A row of ``balance``, as the rules see it; ``amount`` changes as transfers apply."""

    username: str
    iban: str
    token: str
    amount: int
    lmt: int = DEFAULT_LIMIT


def text_problem(field: str, value: str) -> str | None:
    """A reason when a string field is unusable (too long, or holding a NUL Postgres cannot store)."""
    if len(value) > MAX_LENGTHS[field]:
        return f"{field} is too long (at most {MAX_LENGTHS[field]} characters)"
    if "\x00" in value:
        return f"{field} contains a NUL character"
    return None


def storable(value: str, limit: int = MAX_LENGTHS["description"]) -> str:
    """``value`` as it can be kept beside a refusal: without NUL characters (Postgres cannot store them),
    and at most ``limit`` characters (a hostile megabyte is not worth keeping)."""
    return value.replace("\x00", "\ufffd")[:limit]


def account_creation_problem(cmd: ConfirmAccountCreation) -> str | None:
    """Why an account cannot be opened for this command, or None."""
    if not cmd.username.strip():
        return USERNAME_EMPTY
    return text_problem("username", cmd.username)


def transfer_accounts(cmd: ConfirmMoneyTransfer) -> tuple[str, ...]:
    """The IBANs whose accounts the transfer may touch (to lock them before deciding)."""
    return tuple(sorted({iban for iban in (cmd.from_, cmd.to) if is_valid_iban(iban)}))


def decide_transfer(cmd: ConfirmMoneyTransfer, accounts: dict[str, Account]) -> Outcome:
    """Apply ``cmd`` to ``accounts`` (IBAN -> account of this bank), changing them in place.

    Returns the answer and one BalanceChanged per changed account.
    """

    def fail(reason: str) -> Outcome:
        return Outcome(MoneyTransferFailed(cmd.id, reason))

    for field, value in (
        ("token", cmd.token),
        ("from", cmd.from_),
        ("to", cmd.to),
        ("description", cmd.description),
    ):
        problem = text_problem(field, value)
        if problem:
            return fail(problem)
    if cmd.from_ != CASH and not is_valid_iban(cmd.from_):
        return fail(FROM_INVALID)
    if cmd.from_ == cmd.to:
        return fail(SAME_ACCOUNTS)
    if cmd.amount <= 0:
        return fail(AMOUNT_NOT_POSITIVE)
    if not cmd.to.strip():
        return fail(TO_INVALID)

    source = accounts.get(cmd.from_) if cmd.from_ != CASH else None
    target = accounts.get(cmd.to)
    if source is not None:
        if cmd.token != source.token:
            return fail(INVALID_TOKEN)
        if source.amount - cmd.amount < source.lmt:
            return fail(INSUFFICIENT_FUNDS)
    elif target is None:
        return fail(BOTH_UNKNOWN)
    if target is not None and target.amount > MAX_BALANCE - cmd.amount:
        return fail(BALANCE_OVERFLOW)  # fix: the database could not hold it; answered, not dead-lettered
    events: list[BalanceChanged] = []
    if source is not None:
        source.amount -= cmd.amount
        events.append(BalanceChanged(source.username, source.iban, source.amount, -cmd.amount, cmd.to, cmd.description))
    if target is not None:
        target.amount += cmd.amount
        events.append(
            BalanceChanged(target.username, target.iban, target.amount, cmd.amount, cmd.from_, cmd.description)
        )
    return Outcome(MoneyTransferConfirmed(cmd.id), tuple(events))
