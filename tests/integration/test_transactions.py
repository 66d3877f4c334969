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
from open_bank_devtools.loadtest.bank_client import BankClient

from ..conftest import Services
from .handler_process import HandlerProcess, World, isolated_world

pytestmark = pytest.mark.integration


def settled(world: World, client: BankClient, timeout_s: float = 60) -> None:
    """Wait until the handler's group committed the end of every command partition, and the client read
    to the end of every topic it reads (read_committed: the last stable offset)."""
    from confluent_kafka import Consumer, TopicPartition

    settings = world.settings
    probe = Consumer(
        {
            "bootstrap.servers": settings.kafka.brokers,
            "group.id": settings.kafka.group_id,
            "isolation.level": "read_committed",
        }
    )
    topic = settings.topics.commands
    partitions = [TopicPartition(topic, p) for p in probe.list_topics(topic, timeout=10).topics[topic].partitions]
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]
            committed = [c.offset for c in probe.committed(partitions, timeout=10)]
            read = client.consumer.assignment()
            behind = [
                tp
                for tp in client.consumer.position(read)
                if tp.offset < client.consumer.get_watermark_offsets(tp, timeout=10)[1]
            ]
            if all(c >= e for c, e in zip(committed, ends, strict=True) if e > 0) and not behind:
                return
            assert time.monotonic() < deadline, "the handler or the client did not catch up"
            time.sleep(0.1)
    finally:
        probe.close()


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
        settled(world, client)  # everything handled and committed, and read by the client: no more can come
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
