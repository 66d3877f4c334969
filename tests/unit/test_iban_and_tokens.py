import pytest

from command_handler.domain.iban import BANK_IBAN, check_digits, iban_for, is_valid_iban, new_iban
from command_handler.domain.tokens import new_token


def test_the_bank_iban_is_valid() -> None:
    assert check_digits("0000000000") == "66"
    assert iban_for("0000000000") == BANK_IBAN == "NL66OPEN0000000000"
    assert is_valid_iban(BANK_IBAN)


def test_check_digits_follow_standard_iban_mod_97() -> None:
    for digits in ("0123456789", "0999999999", "0000000001"):
        iban = iban_for(digits)
        rearranged = iban[4:] + iban[:4]
        numeric = "".join(str(int(ch, 36)) for ch in rearranged)
        assert int(numeric) % 97 == 1


@pytest.mark.parametrize(
    "value",
    [
        "NL67OPEN0000000000",  # wrong check digits
        "NL66OPEN000000000",  # 17 characters
        "NL66OPEN00000000000",  # 19 characters
        "NL66BANK0000000000",  # another bank
        "DE66OPEN0000000000",
        "cash",
        "",
        "NL66OPEN00000000\u06600",  # non-ASCII digit
    ],
)
def test_invalid_ibans(value: str) -> None:
    assert not is_valid_iban(value)


def test_new_ibans_are_valid_start_with_zero_and_vary() -> None:
    ibans = {new_iban() for _ in range(200)}
    assert len(ibans) > 190
    for iban in ibans:
        assert is_valid_iban(iban)
        assert iban[8] == "0"


def test_tokens_are_20_random_digits() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(len(t) == 20 and t.isdigit() for t in tokens)


def test_iban_for_rejects_bad_account_numbers() -> None:
    with pytest.raises(ValueError):
        iban_for("12345")


def test_the_iban_cache_never_keeps_a_hostile_value() -> None:
    from command_handler.domain import iban

    before = iban._is_valid_18.cache_info().currsize
    assert not iban.is_valid_iban("N" * 1_000_000)  # a megabyte "from" field of a hostile transfer
    assert iban._is_valid_18.cache_info().currsize == before
    assert iban.is_valid_iban(iban.iban_for("0123456789"))
