"""Open-bank IBANs: ``NL`` + 2 check digits + ``OPEN`` + 10 digits (standard mod-97 check)."""

from __future__ import annotations

import secrets
from functools import lru_cache

BANK_IBAN = "NL66OPEN0000000000"
IBAN_LENGTH = 18

# "OPEN" and "NL" with letters turned into numbers (A=10 ... Z=35), as mod-97 requires:
# OPEN -> 24 25 14 23, NL -> 23 21, followed by the "00" placeholder check digits.
_PREFIX = "24251423"
_SUFFIX = "232100"


def check_digits(account_digits: str) -> str:
    return f"{98 - int(_PREFIX + account_digits + _SUFFIX) % 97:02d}"


def iban_for(account_digits: str) -> str:
    if len(account_digits) != 10 or not account_digits.isdigit():
        raise ValueError(f"an open-bank account number is 10 digits, got {account_digits!r}")
    return f"NL{check_digits(account_digits)}OPEN{account_digits}"


def is_valid_iban(value: str) -> bool:
    """True when ``value`` is 18 characters and equals the IBAN built from its last 10 digits."""
    return len(value) == IBAN_LENGTH and _is_valid_18(value)


@lru_cache(maxsize=4096)  # the same accounts come again and again; 4,096 keys of 18 characters at most
def _is_valid_18(value: str) -> bool:
    digits = value[-10:]
    return digits.isascii() and digits.isdigit() and value == iban_for(digits)


def new_iban() -> str:
    """A fresh random IBAN: ``0`` followed by 9 random digits, from a secure source."""
    return iban_for("0" + f"{secrets.randbelow(10**9):09d}")
