import pytest

from command_handler.retry import NotReady, retry


def test_retry_returns_once_the_attempt_succeeds() -> None:
    calls = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("refused")
        return "ok"

    assert retry(attempt, "thing", timeout_s=5, first_delay_s=0.01) == "ok"
    assert len(calls) == 3


def test_retry_gives_up_with_a_clear_message() -> None:
    def attempt() -> None:
        raise ConnectionError("connection refused")

    with pytest.raises(NotReady, match=r"broker at x:1: no success within .*connection refused"):
        retry(attempt, "broker at x:1", timeout_s=0.05, first_delay_s=0.01)


def test_retry_does_not_swallow_other_errors() -> None:
    def attempt() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        retry(attempt, "thing", timeout_s=1, retry_on=(ConnectionError,))
