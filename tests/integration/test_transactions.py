"""KAFKA_TRANSACTIONS=true: each batch's outputs and offsets in one Kafka transaction. A handler killed
with SIGKILL in the middle of a stream and started again leaves no duplicated answer and no duplicated
event for a read_committed reader (the bank client reads so: librdkafka's default), while the same
kill without transactions may answer some commands twice (at least once)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from command_handler.domain.iban import BANK_IBAN
from open_bank_devtools.chaos import audit
from open_bank_devtools.loadtest.bank_client import BankClient

from ..conftest import Services
from .handler_process import HandlerProcess, World, isolated_world, wait_committed

pytestmark = pytest.mark.integration


@pytest.fixture
def world(services: Services) -> Iterator[World]:
    if services.env.get("STACK_BROKER") == "tansu":
        pytest.skip("Tansu has no transactions")
    with isolated_world(services.env, "txn" + uuid4().hex[:8]) as w:
        yield w


def test_a_handler_killed_mid_stream_leaves_no_duplicate_for_read_committed_readers(
    world: World, tmp_path: Path
) -> None:
    handler = HandlerProcess(world, tmp_path, name="txn-1", KAFKA_TRANSACTIONS="true").wait_ready()
    client = BankClient(world.settings)  # after the handler's --sync made the topics
    try:
        opened = client.wait_for(client.open_account("txn-user")).value
        before = audit.balances(world.settings)
        sent = [client.transfer("txn-user", "", 1, "cash", opened["iban"], f"d{n}") for n in range(3000)]
        client.flush()
        deadline = time.monotonic() + 60
        while sum(1 for i in sent if client.feedback.get(i)) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        handler.kill()  # SIGKILL in the middle of the stream
        answered_before = sum(1 for i in sent if client.feedback.get(i))
        assert 0 < answered_before < len(sent), answered_before
        handler = HandlerProcess(world, tmp_path, name="txn-2", KAFKA_TRANSACTIONS="true").wait_ready()
        client.wait_all(sent, 120)
        client.wait_events(opened["iban"], len(sent), 60)
        wait_committed(world)  # everything handled and committed: no more output can come
        findings = audit.audit(world.settings, client.registry, set(sent), before)  # read_committed, from the start
        assert findings.clean(exactly_once=True), (findings.line(0), dict(findings.examples))
        assert findings.duplicated_outputs == 0 and findings.answered == len(sent)
        answers = Counter({i: len(client.feedback[i]) for i in sent})
        assert max(answers.values()) == 1, answers.most_common(3)
        events = client.events_for(opened["iban"])  # in the order of their partition
        assert len(events) == len(sent)
        assert sorted(e.value["description"] for e in events) == sorted(f"d{n}" for n in range(len(sent)))
        balances = [e.value["new_balance"] for e in events]
        assert balances == sorted(balances) and balances[-1] == len(sent)  # never back, and all counted
        bank = client.wait_for(client.transfer("txn-user", opened["token"], 5, opened["iban"], BANK_IBAN, "after"))
        assert bank.record == "MoneyTransferConfirmed"
    finally:
        client.close()
        assert handler.terminate() == 0
