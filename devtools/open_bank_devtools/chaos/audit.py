"""The campaign's audit: computed only from what was sent and what came out of Kafka and the database.

It reads, from the beginning and as a ``read_committed`` reader, the commands topic
(what was sent, hostile records included), both feedback topics, the BalanceChanged
topic and the dead-letter topic, and the balances in PostgreSQL. Never the
handler's logs.

* lost: a command the load sent (acknowledged by the broker) with no answer;
* conflicting: two different answers to one command id;
* wrongly dead-lettered: a valid command of the load in the dead-letter topic;
* money delta: cents created or destroyed (balances now minus balances before,
  against the confirmed transfers' deposits and withdrawals through ``cash``);
* ledger mismatches: accounts whose balance differs from the one the answered
  history gives (balance before plus every confirmed transfer's change);
* events missing: a change of a confirmed transfer with no BalanceChanged;
* unaccounted: a record that was neither answered (it decodes to a command with
  an answer) nor dead-lettered with a reason;
* duplicated outputs: answers beyond one per command record, events beyond one
  per change (0 is required only with Kafka transactions).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from sqlalchemy import create_engine, text

from command_handler.adapters.avro_codec import AvroCodec, PoisonMessage
from command_handler.config import Settings
from command_handler.domain.model import ConfirmAccountCreation, ConfirmMoneyTransfer
from command_handler.errors import Unavailable
from command_handler.topology import load_topology

Position = tuple[int, int]  # (partition, offset) on the commands topic


@dataclass
class Findings:
    sent: int = 0
    answered: int = 0
    lost: int = 0
    conflicting: int = 0
    wrongly_dead_lettered: int = 0
    money_delta: int = 0
    ledger_mismatches: int = 0
    events_missing: int = 0
    unaccounted: int = 0
    duplicated_outputs: int = 0
    dead_lettered: int = 0
    records: int = 0  # records on the commands topic
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def note(self, what: str, example: str) -> None:
        if len(self.examples[what]) < 5:
            self.examples[what].append(example)

    def line(self, faults: int, scheduled: int | None = None) -> str:
        return (
            f"chaos: sent {self.sent} answered {self.answered} lost {self.lost} conflicting {self.conflicting} "
            f"wrongly-dead-lettered {self.wrongly_dead_lettered} money-delta {self.money_delta} "
            f"ledger-mismatches {self.ledger_mismatches} events-missing {self.events_missing} "
            f"unaccounted {self.unaccounted} faults {faults}" + (f" of {scheduled}" if scheduled is not None else "")
        )

    def clean(self, exactly_once: bool = False) -> bool:
        bad = (
            self.lost,
            self.conflicting,
            self.wrongly_dead_lettered,
            self.money_delta,
            self.ledger_mismatches,
            self.events_missing,
            self.unaccounted,
        )
        return not any(bad) and not (exactly_once and self.duplicated_outputs)


def read_topics(settings: Settings, topics: Iterable[str], timeout_s: float = 120.0) -> dict[str, list[Message]]:
    """Every committed record of ``topics`` from the beginning up to their ends now (read_committed)."""
    consumer = Consumer(
        {
            **settings.kafka.common(),
            "group.id": f"chaos-audit-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 50,
        }
    )
    try:
        assignment = []
        ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                ends[(topic, p)] = high
                if high > low:
                    assignment.append(TopicPartition(topic, p, low))
        found: dict[str, list[Message]] = {t: [] for t in topics}
        if not assignment:
            return found
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for msg in consumer.consume(2000, 0.5):
                if msg.error() is None:
                    found[msg.topic() or ""].append(msg)
            positions = consumer.position(assignment)
            if all(tp.offset >= 0 and tp.offset >= ends[(tp.topic, tp.partition)] for tp in positions):
                return found
        raise TimeoutError(f"the audit could not read {', '.join(topics)} to their ends in {timeout_s:.0f}s")
    finally:
        consumer.close()


class Decoder:
    """Commands and outputs from their bytes, with the registry (the product's own decoding of commands)."""

    def __init__(self, settings: Settings, client: SchemaRegistryClient) -> None:
        self.codec = AvroCodec(
            client, load_topology(settings.topics.by_env()), settings.topics, unknown_schema_grace_s=0
        )
        self.outputs = AvroDeserializer(client, conf={"subject.name.strategy": topic_record_subject_name_strategy})
        self.client = client
        self._names: dict[int, str] = {}

    def command(self, value: bytes | None) -> ConfirmAccountCreation | ConfirmMoneyTransfer | None:
        try:
            return self.codec.decode_command(value)
        except PoisonMessage:
            return None
        except Unavailable:
            return None

    def output(self, msg: Message) -> tuple[str, dict[str, Any]]:
        value = msg.value()
        assert value is not None
        schema_id = int.from_bytes(value[1:5], "big")
        if schema_id not in self._names:
            import json

            self._names[schema_id] = str(json.loads(self.client.get_schema(schema_id).schema_str or "{}")["name"])
        decoded = self.outputs(value, SerializationContext(msg.topic() or "", MessageField.VALUE))
        assert isinstance(decoded, dict)
        return self._names[schema_id].rsplit(".", 1)[-1], decoded


def balances(settings: Settings) -> dict[str, int]:
    engine = create_engine(settings.database.url())
    try:
        with engine.connect() as conn:
            return {iban: int(amount) for iban, amount in conn.execute(text("SELECT iban, amount FROM balance"))}
    finally:
        engine.dispose()


def audit(
    settings: Settings,
    client: SchemaRegistryClient,
    sent_ids: set[uuid.UUID],
    balances_before: dict[str, int],
) -> Findings:
    """The findings, from Kafka and the database. ``sent_ids``: the load's valid commands the broker
    acknowledged; ``balances_before``: the balance table before the campaign."""
    t = settings.topics
    topics = [t.commands, t.account_creation_feedback, t.money_transfer_feedback, t.balance_changed, t.dead_letter]
    read = read_topics(settings, topics)
    decoder = Decoder(settings, client)
    f = Findings(sent=len(sent_ids), records=len(read[t.commands]))

    # what was sent: each record's command, if it decodes to one
    commands: dict[uuid.UUID, ConfirmAccountCreation | ConfirmMoneyTransfer] = {}
    records_per_id: Counter[uuid.UUID] = Counter()
    undecodable: set[Position] = set()
    decoded_at: dict[Position, uuid.UUID] = {}
    for msg in read[t.commands]:
        position = (msg.partition() or 0, msg.offset() or 0)
        command = decoder.command(msg.value())
        if command is None:
            undecodable.add(position)
            continue
        commands.setdefault(command.id, command)
        records_per_id[command.id] += 1
        decoded_at[position] = command.id

    # what came out: answers per id
    answers: dict[uuid.UUID, list[tuple[str, tuple[tuple[str, Any], ...]]]] = defaultdict(list)
    for topic in (t.account_creation_feedback, t.money_transfer_feedback):
        for msg in read[topic]:
            name, value = decoder.output(msg)
            command_id = uuid.UUID(bytes=value.pop("id"))
            answers[command_id].append((name, tuple(sorted(value.items()))))
    for command_id in sent_ids:
        if answers.get(command_id):
            f.answered += 1
        else:
            f.lost += 1
            f.note("lost", str(command_id))
    for command_id, given in answers.items():
        if len(set(given)) > 1:
            f.conflicting += 1
            f.note("conflicting", f"{command_id}: {sorted(set(given))}")
        f.duplicated_outputs += max(0, len(given) - records_per_id.get(command_id, len(given)))

    # dead letters: each with a reason; never a valid command of the load
    dead: set[Position] = set()
    for msg in read[t.dead_letter]:
        f.dead_lettered += 1
        headers = dict(msg.headers() or [])
        if not headers.get("dlq.error"):
            f.note("dead letter without a reason", repr(headers))
            continue
        position = (int(headers["dlq.partition"] or 0), int(headers["dlq.offset"] or 0))
        dead.add(position)
        dead_id = decoded_at.get(position)
        if dead_id is not None and dead_id in sent_ids:
            f.wrongly_dead_lettered += 1
            f.note("wrongly dead-lettered", f"{dead_id} at {position}: {headers['dlq.error']!r}")

    # every record answered (it decodes to a command with an answer) or dead-lettered with a reason
    for msg in read[t.commands]:
        position = (msg.partition() or 0, msg.offset() or 0)
        record_id = decoded_at.get(position)
        if position in dead or (record_id is not None and answers.get(record_id)):
            continue
        f.unaccounted += 1
        f.note("unaccounted", f"record at {position} ({'undecodable' if record_id is None else record_id})")

    # money and ledger: the answered history against the balances
    after = balances(settings)
    expected = dict(balances_before)
    for given in answers.values():
        record, _ = given[0]
        if record == "AccountCreationConfirmed":
            iban = dict(given[0][1])["iban"]
            expected.setdefault(iban, 0)
    wanted_events: Counter[tuple[str, int, str, str]] = Counter()
    cash_in = 0
    for command_id, given in answers.items():
        command = commands.get(command_id)
        if given[0][0] != "MoneyTransferConfirmed" or not isinstance(command, ConfirmMoneyTransfer):
            continue
        if command.from_ in expected:
            expected[command.from_] -= command.amount
            wanted_events[(command.from_, -command.amount, command.to, command.description)] += 1
        else:  # from cash (or another bank): money comes in
            cash_in += command.amount
        if command.to in expected:
            expected[command.to] += command.amount
            wanted_events[(command.to, command.amount, command.from_, command.description)] += 1
        else:  # to another bank: money leaves
            cash_in -= command.amount
    f.money_delta = (sum(after.values()) - sum(balances_before.values())) - cash_in
    for iban in set(expected) | set(after):
        if expected.get(iban) != after.get(iban):
            f.ledger_mismatches += 1
            f.note("ledger mismatch", f"{iban}: database {after.get(iban)}, history {expected.get(iban)}")

    found_events: Counter[tuple[str, int, str, str]] = Counter()
    for msg in read[t.balance_changed]:
        _, value = decoder.output(msg)
        found_events[(value["iban"], value["changed_by"], value["from_to"], value["description"])] += 1
    for event, count in wanted_events.items():
        missing = count - found_events.get(event, 0)
        if missing > 0:
            f.events_missing += missing
            f.note("event missing", repr(event))
        else:
            f.duplicated_outputs += -missing
    return f
