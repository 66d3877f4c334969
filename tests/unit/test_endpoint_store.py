"""The endpoint's store tells a client that the database did not answer, in words of its own: no SQL, no
parameters (a database that refuses connections is a closed local port: no service needed)."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest
from sqlalchemy import create_engine

from open_bank_endpoint.errors import StoreUnavailable
from open_bank_endpoint.store import Change, Store


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there


@pytest.fixture
def store() -> Store:
    url = f"postgresql+psycopg://someone:secret-pw@127.0.0.1:{closed_port()}/transactiondb"
    return Store(create_engine(url, connect_args={"connect_timeout": 2}))


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.account("alice"),
        lambda s: s.by_iban("NL66OPEN0000000000", 10),
        lambda s: s.transaction(1),
        lambda s: s.all_last(),
        lambda s: s.add_account("alice", "hash", uuid.uuid4()),
        lambda s: s.remove_account(uuid.uuid4()),
        lambda s: s.add_changes([Change("NL66OPEN0000000000", 100, 100, "cash", "deposit")]),
    ],
)
def test_a_database_that_does_not_answer_is_a_clear_error(
    store: Store, call: object, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "open_bank_endpoint.store"), pytest.raises(StoreUnavailable) as raised:
        call(store)  # type: ignore[operator]
    message = str(raised.value)
    assert message == "the bank's database did not answer; try again"
    assert "SELECT" not in message and "INSERT" not in message and "alice" not in message
    assert any("failed" in r.getMessage() for r in caplog.records)  # the cause is logged
    assert not any("secret-pw" in r.getMessage() for r in caplog.records)
