"""A client that plays the GraphQL endpoint's part over Kafka: it sends commands and collects answers.

Used by the end-to-end tests and the latency tests; not by the handler. It
reads the feedback and balance_changed topics by assigning every partition
from the current end (no consumer group, so no join delay), so it sees every
answer to a command sent after it started.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from command_handler.adapters.schema_registry import SchemaRegistry
from command_handler.config import Settings
from command_handler.topology import load_topology

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    record: str  # short record name, e.g. MoneyTransferFailed
    value: dict[str, Any]
    key: bytes | None
    received: float  # time.monotonic() when it arrived
    partition: int
    offset: int
    schema_id: int  # the writer schema's id in the record's Confluent framing


class BankClient:
    """Sends commands; collects answers.

    With ``keep_all`` every answer is kept (tests). Without it (long load runs)
    only answers to watched command ids and events of watched IBANs are kept,
    and every answer is handed to ``on_answer``, so memory stays bounded.
    """

    def __init__(
        self,
        settings: Settings,
        linger_ms: int = 0,
        keep_all: bool = True,
        on_answer: Callable[[str, Answer], None] | None = None,
    ) -> None:
        self.keep_all = keep_all
        self.on_answer = on_answer
        self.watched_ids: set[uuid.UUID] = set()
        self.watched_ibans: set[str] = set()
        self.watched_keys: set[bytes] = set()  # BalanceChanged keys (usernames) worth decoding
        self.topics = settings.topics
        registry = SchemaRegistry(settings.registry)
        self.registry = registry.client
        topology = load_topology(settings.topics.by_env())
        strategy = {"subject.name.strategy": topic_record_subject_name_strategy}
        self._serializers = {}
        for name in ("ConfirmAccountCreation", "ConfirmMoneyTransfer"):
            ours = topology.records[name].schema_str
            # written like the GraphQL endpoint writes them: with the registered version that means ours
            registered = registry.resolve(f"{settings.topics.commands}-{topology.records[name].full_name}", ours)
            self._serializers[name] = AvroSerializer(
                self.registry,
                registered.schema_str if registered else ours,
                conf={"auto.register.schemas": False, **strategy},
            )
        self._deserializer = AvroDeserializer(self.registry, conf=strategy)
        self._names: dict[int, str] = {}
        common = settings.kafka.common()
        self.producer = Producer({**common, "acks": "all", "linger.ms": linger_ms, "enable.idempotence": True})
        self.consumer = Consumer(
            {
                **common,
                "group.id": f"bank-client-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": settings.kafka.fetch_wait_max_ms,
                **settings.kafka.consumer_extra,
            }
        )
        self._assign_from_end(
            [
                settings.topics.account_creation_feedback,
                settings.topics.money_transfer_feedback,
                settings.topics.balance_changed,
            ]
        )
        self._lock = threading.Condition()
        self.feedback: dict[uuid.UUID, list[Answer]] = defaultdict(list)
        self.balance_changed: dict[str, list[Answer]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._consume, name="bank-client", daemon=True)
        self._thread.start()

    def _assign_from_end(self, topics: list[str]) -> None:
        metadata = self.consumer.list_topics(timeout=10)
        partitions = []
        for topic in topics:
            for p in metadata.topics[topic].partitions:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                partitions.append(TopicPartition(topic, p, high if high >= 0 else OFFSET_END))
        self.consumer.assign(partitions)

    # -- sending --------------------------------------------------------------

    def encode(self, record: str, value: dict[str, Any]) -> bytes:
        data = self._serializers[record](value, SerializationContext(self.topics.commands, MessageField.VALUE))
        assert data is not None
        return data

    def _send(self, record: str, key: str | None, value: dict[str, Any]) -> None:
        self.send_raw(key.encode() if key is not None else None, self.encode(record, value))

    def open_account(self, username: str, command_id: uuid.UUID | None = None) -> uuid.UUID:
        command_id = command_id or uuid.uuid4()
        self._send("ConfirmAccountCreation", username, {"id": command_id.bytes, "username": username})
        return command_id

    def transfer(
        self,
        key: str,
        token: str,
        amount: int,
        frm: str,
        to: str,
        description: str = "",
        command_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        command_id = command_id or uuid.uuid4()
        self.send_raw(key.encode(), self.encode_transfer(command_id, token, amount, frm, to, description))
        return command_id

    def encode_transfer(
        self, command_id: uuid.UUID, token: str, amount: int, frm: str, to: str, description: str
    ) -> bytes:
        """A ConfirmMoneyTransfer in the wire format, to send now or later (the benchmark encodes ahead)."""
        value = {
            "id": command_id.bytes,
            "token": token,
            "amount": amount,
            "from": frm,
            "to": to,
            "description": description,
        }
        return self.encode("ConfirmMoneyTransfer", value)

    def send_raw(self, key: bytes | None, value: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(self.topics.commands, value, key)
                break
            except BufferError:  # the producer's queue is full: let it deliver, then go on
                self.producer.poll(0.05)
        self.producer.poll(0)

    def flush(self) -> None:
        self.producer.flush(30)

    # -- receiving ------------------------------------------------------------

    def _record_name(self, value: bytes) -> str:
        schema_id = int.from_bytes(value[1:5], "big")
        if schema_id not in self._names:
            schema = json.loads(self.registry.get_schema(schema_id).schema_str or "{}")
            self._names[schema_id] = str(schema["name"]).rsplit(".", 1)[-1]
        return self._names[schema_id]

    def _decode(self, topic: str, value: bytes) -> tuple[Any, str]:
        """The record and its short name; waits up to a minute while the registry is away (a fault the chaos
        campaign makes), then lets the error end the client's thread."""
        for attempt in range(120):
            try:
                decoded = self._deserializer(value, SerializationContext(topic, MessageField.VALUE))
                return decoded, self._record_name(value)
            except Exception:
                if attempt == 119 or self._stop.wait(0.5):
                    raise
        raise AssertionError("unreachable")

    def _consume(self) -> None:
        while not self._stop.is_set():
            # consume(n, timeout) waits for n messages or the whole timeout: take the first with poll, then drain
            first = self.consumer.poll(0.05)
            if first is None:
                continue
            for msg in [first, *self.consumer.consume(500, 0)]:
                if msg.error() is not None or msg.value() is None:
                    continue
                topic, value = msg.topic(), msg.value()
                assert topic is not None and value is not None
                if topic == self.topics.balance_changed and not self.keep_all and msg.key() not in self.watched_keys:
                    continue  # nobody waits for it: save the decoding
                decoded, name = self._decode(topic, value)
                answer = Answer(
                    name,
                    decoded,
                    msg.key(),
                    time.monotonic(),
                    msg.partition() or 0,
                    msg.offset() or 0,
                    int.from_bytes(value[1:5], "big"),
                )
                if self.on_answer is not None:
                    self.on_answer(topic, answer)
                with self._lock:
                    if topic == self.topics.balance_changed:
                        iban = decoded["iban"]
                        if self.keep_all or iban in self.watched_ibans:
                            self.balance_changed[iban].append(answer)
                            self._lock.notify_all()
                    else:
                        command_id = uuid.UUID(bytes=decoded["id"])
                        if self.keep_all or command_id in self.watched_ids:
                            self.feedback[command_id].append(answer)
                            self._lock.notify_all()

    def wait_for(self, command_id: uuid.UUID, timeout_s: float = 30.0) -> Answer:
        """The first answer to ``command_id``; TimeoutError if none arrives in time."""
        with self._lock:
            if not self._lock.wait_for(lambda: self.feedback.get(command_id), timeout=timeout_s):
                raise TimeoutError(f"no answer to {command_id} within {timeout_s}s")
            return self.feedback[command_id][0]

    def wait_answers(self, command_id: uuid.UUID, count: int, timeout_s: float = 30.0) -> list[Answer]:
        """The first ``count`` answers to ``command_id`` (a replayed command is answered again)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.feedback.get(command_id, [])) >= count, timeout=timeout_s):
                raise TimeoutError(f"fewer than {count} answers to {command_id} within {timeout_s}s")
            return list(self.feedback[command_id])

    def wait_all(self, command_ids: list[uuid.UUID], timeout_s: float = 60.0) -> dict[uuid.UUID, Answer]:
        with self._lock:
            done = self._lock.wait_for(lambda: all(self.feedback.get(i) for i in command_ids), timeout=timeout_s)
            if not done:
                missing = [i for i in command_ids if not self.feedback.get(i)]
                raise TimeoutError(f"{len(missing)} of {len(command_ids)} commands unanswered after {timeout_s}s")
            return {i: self.feedback[i][0] for i in command_ids}

    def events_for(self, iban: str) -> list[Answer]:
        with self._lock:
            return list(self.balance_changed.get(iban, []))

    def wait_events(self, iban: str, count: int, timeout_s: float = 30.0) -> list[Answer]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.balance_changed.get(iban, [])) >= count, timeout=timeout_s):
                raise TimeoutError(f"fewer than {count} BalanceChanged for {iban} within {timeout_s}s")
            return list(self.balance_changed[iban])

    def wait_event(self, iban: str, matches: Callable[[Answer], bool], timeout_s: float) -> Answer | None:
        """The first BalanceChanged of ``iban`` that ``matches``, or None after ``timeout_s``."""
        found: list[Answer] = []

        def look() -> bool:
            found[:] = [a for a in self.balance_changed.get(iban, []) if matches(a)]
            return bool(found)

        with self._lock:
            return found[0] if self._lock.wait_for(look, timeout=timeout_s) else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.producer.flush(10)
        self.consumer.close()
