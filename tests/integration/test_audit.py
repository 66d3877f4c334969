"""The campaign's audit finds what it is there to find: a command nobody answered, a balance changed
behind the ledger's back (money created, a mismatch), a dead letter of a valid command."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from confluent_kafka import Producer
from sqlalchemy import create_engine, text

from command_handler.domain.rules import CASH
from open_bank_devtools.chaos import audit
from open_bank_devtools.loadtest.bank_client import BankClient

from ..conftest import Services
from .handler_process import HandlerProcess, World, isolated_world

pytestmark = pytest.mark.integration


@pytest.fixture
def world(services: Services) -> Iterator[World]:
    with isolated_world(services.env, "audit" + uuid4().hex[:8]) as w:
        yield w


def test_the_audit_finds_a_lost_command_created_money_and_a_wrong_dead_letter(world: World, tmp_path: Path) -> None:
    handler = HandlerProcess(world, tmp_path).wait_ready()
    client = BankClient(world.settings)
    try:
        before = audit.balances(world.settings)
        opened_id = client.open_account("audited")
        opened = client.wait_for(opened_id).value
        deposit = client.transfer("audited", "", 100, CASH, opened["iban"], "counted")
        client.wait_for(deposit)
        clean = audit.audit(world.settings, client.registry, {opened_id, deposit}, before)
        assert clean.clean() and clean.answered == 2, clean.line(0)
        assert handler.terminate() == 0
        never_answered = client.transfer("audited", "", 7, CASH, opened["iban"], "nobody runs")
        client.flush()
        wrongly = uuid4()  # a valid command put into the dead-letter topic, as a broken handler would
        value = client.encode_transfer(wrongly, "", 3, CASH, opened["iban"], "set aside")
        client.send_raw(b"audited", value)
        client.flush()
        dlq = Producer({"bootstrap.servers": world.settings.kafka.brokers})
        headers = {"dlq.error": b"made up", "dlq.topic": world.settings.topics.commands.encode()}
        commands = audit.read_topics(world.settings, [world.settings.topics.commands])[world.settings.topics.commands]
        original = next(m for m in commands if m.value() == value)
        headers |= {"dlq.partition": str(original.partition()).encode(), "dlq.offset": str(original.offset()).encode()}
        dlq.produce(world.settings.topics.dead_letter, value, b"audited", headers=list(headers.items()))
        dlq.flush(10)
    finally:
        client.close()
    engine = create_engine(world.settings.database.url())
    with engine.begin() as conn:  # 5 cents out of nowhere
        conn.execute(text("UPDATE balance SET amount = amount + 5 WHERE iban = :i"), {"i": opened["iban"]})
    engine.dispose()
    found = audit.audit(world.settings, client.registry, {opened_id, deposit, never_answered, wrongly}, before)
    assert (found.sent, found.answered, found.lost) == (4, 2, 2)
    assert found.wrongly_dead_lettered == 1
    assert found.money_delta == 5 and found.ledger_mismatches == 1
    assert found.unaccounted == 1  # the one never answered nor dead-lettered
    assert not found.clean()
