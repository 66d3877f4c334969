"""Kafka for the endpoint: commands out (keyed by username, Avro, TopicRecordNameStrategy, schemas only looked
up), feedback and BalanceChanged in (one consumer thread of its own group over the three topics)."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from fastavro import parse_schema

from command_handler.adapters.avro_codec import frame_header, framed_schema_id, read_framed, write_framed
from command_handler.adapters.schema_registry import SchemaRegistry
from command_handler.topology import load_topology
from open_bank_endpoint.config import EndpointSettings
from open_bank_endpoint.store import Change

log = logging.getLogger(__name__)

COMMANDS = ("ConfirmAccountCreation", "ConfirmMoneyTransfer")
COMMIT_EVERY_S = 1.0
MAX_READ_SCHEMAS = 1_000  # writer schemas kept parsed by id (ever new ids: the cache starts again)


@dataclass(frozen=True)
class AccountAnswer:
    command_id: uuid.UUID
    iban: str | None
    token: str | None
    reason: str | None


@dataclass(frozen=True)
class TransferAnswer:
    command_id: uuid.UUID
    reason: str | None  # None: confirmed


class NotYet(Exception):
    """Something the endpoint needs is not there yet (a topic, a subject); it keeps waiting."""


class Commands:
    """The producer of commands, written with the registered versions of the two command records (Confluent
    framing, TopicRecordNameStrategy, nothing registered: what AvroSerializer with ``auto.register.schemas``
    off writes, through fastavro with each schema parsed once)."""

    def __init__(self, settings: EndpointSettings, registry: SchemaRegistry) -> None:
        kafka = settings.handler.kafka
        self.topic = settings.handler.topics.commands
        self.registry = registry
        records = load_topology(settings.handler.topics.by_env()).records
        self._writers: dict[str, tuple[bytes, Any]] = {}  # record name -> (frame header, parsed schema)
        for name in COMMANDS:
            subject = f"{self.topic}-{records[name].full_name}"
            registered = registry.resolve(subject, records[name].schema_str)
            if registered is None:
                raise NotYet(f"subject {subject} (run `command-handler sync`, or the handler with --sync)")
            schema = parse_schema(json.loads(registered.schema_str))
            self._writers[name] = (frame_header(registered.schema_id), schema)
        self.producer = Producer(
            {
                **kafka.common(),
                **kafka.producer_extra,
                "client.id": settings.client_id,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": settings.linger_ms,
            }
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="endpoint-producer", daemon=True)
        self._poller.start()

    def _serialize(self, name: str, record: dict[str, Any]) -> bytes:
        header, schema = self._writers[name]
        return write_framed(header, schema, record)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)

    def send(self, name: str, username: str, record: dict[str, Any], failed: Callable[[str], None]) -> None:
        """Produce a command; ``failed(reason)`` is called (from the producer's thread) if it is not delivered."""

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                log.warning("command %s not delivered: %s", name, err.str())
                failed(f"the command could not be sent: {err.str()}")

        try:
            self.producer.produce(
                self.topic, key=username.encode(), value=self._serialize(name, record), on_delivery=delivered
            )
        except (BufferError, KafkaException) as err:
            failed(f"the command could not be sent: {err}")

    def account_creation(self, command_id: uuid.UUID, username: str, failed: Callable[[str], None]) -> None:
        self.send("ConfirmAccountCreation", username, {"id": command_id.bytes, "username": username}, failed)

    def money_transfer(
        self,
        command_id: uuid.UUID,
        username: str,
        token: str,
        amount: int,
        from_: str,
        to: str,
        description: str,
        failed: Callable[[str], None],
    ) -> None:
        record = {
            "id": command_id.bytes,
            "token": token,
            "amount": amount,
            "from": from_,
            "to": to,
            "description": description,
        }
        self.send("ConfirmMoneyTransfer", username, record, failed)

    def close(self) -> None:
        self._stop.set()
        self._poller.join(5)
        self.producer.flush(5)


Event = AccountAnswer | TransferAnswer | Change


class Answers:
    """The consumer of the feedback topics and balance_changed: decoded events handed to ``handle`` in batches
    (on its own thread); offsets committed after ``handle`` returned."""

    def __init__(
        self, settings: EndpointSettings, registry: SchemaRegistry, handle: Callable[[list[Event]], None]
    ) -> None:
        kafka = settings.handler.kafka
        topics = settings.handler.topics
        self.acf, self.mtf, self.bc = (
            topics.account_creation_feedback,
            topics.money_transfer_feedback,
            topics.balance_changed,
        )
        self.consumer = Consumer(
            {
                **kafka.common(),
                **kafka.consumer_extra,
                "client.id": settings.client_id,
                "group.id": settings.group_id,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": kafka.session_timeout_ms,
                "fetch.wait.max.ms": min(kafka.fetch_wait_max_ms, 100),
            }
        )
        listed = self.consumer.list_topics(timeout=10).topics
        missing = [t for t in (self.acf, self.mtf, self.bc) if t not in listed]
        if missing:
            self.consumer.close()
            raise NotYet(f"topics {', '.join(missing)} (run `command-handler sync`, or the handler with --sync)")
        self.registry = registry
        self._schemas: dict[int, Any] = {}  # writer schema id -> parsed (used on the consumer's thread only)
        self.handle = handle
        self.failure: str | None = None  # why the last batch could not be handled, while it cannot
        self._stop = threading.Event()
        self.consumer.subscribe([self.acf, self.mtf, self.bc])
        self._thread = threading.Thread(target=self._run, name="endpoint-consumer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def decode(self, value: bytes | None) -> Any:
        """A framed record read with its writer schema (asked of the registry once per id), as AvroDeserializer
        without a reader schema reads it; ValueError for a value that is not Confluent-framed Avro."""
        schema_id = framed_schema_id(value)
        if value is None or schema_id is None:
            raise ValueError("not Confluent-framed Avro (no magic byte 0 and 4-byte schema id)")
        schema = self._schemas.get(schema_id)
        if schema is None:
            schema = parse_schema(json.loads(self.registry.client.get_schema(schema_id).schema_str or ""))
            if len(self._schemas) >= MAX_READ_SCHEMAS:
                self._schemas.clear()
            self._schemas[schema_id] = schema
        return read_framed(value, schema)

    def _event(self, msg: Message) -> Event | None:
        topic = msg.topic()
        value = self.decode(msg.value())
        if not isinstance(value, dict):
            return None
        if topic == self.bc:
            return Change(
                value["iban"], value["new_balance"], value["changed_by"], value["from_to"], value["description"]
            )
        command_id = uuid.UUID(bytes=bytes(value["id"]))
        if topic == self.acf:
            return AccountAnswer(command_id, value.get("iban"), value.get("token"), value.get("reason"))
        return TransferAnswer(command_id, value.get("reason"))

    def _run(self) -> None:
        committed_at = time.monotonic()
        uncommitted = False
        while not self._stop.is_set():
            # consume() waits its whole timeout unless the batch fills: wait for one, then take what is there
            first = self.consumer.poll(0.1)
            messages = [] if first is None else [first, *self.consumer.consume(499, timeout=0)]
            events: list[Event] = []
            for msg in messages:
                if msg.error() is not None:
                    log.warning("consumer: %s", msg.error())
                    continue
                try:
                    event = self._event(msg)
                except Exception as err:  # a record it cannot read is skipped, never a stuck consumer
                    log.warning(
                        "skipped %s[%s]@%s: %s: %s", msg.topic(), msg.partition(), msg.offset(), type(err).__name__, err
                    )
                    continue
                if event is not None:
                    events.append(event)
            if not events and not messages:
                if uncommitted and time.monotonic() - committed_at >= COMMIT_EVERY_S:
                    committed_at, uncommitted = self._commit(), False
                continue
            while not self._stop.is_set():
                try:
                    self.handle(events)
                    self.failure = None
                    break
                except Exception as err:  # the database away: wait, and keep the batch
                    self.failure = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
                    log.warning("could not store %d events, retrying in 1 s: %s", len(events), self.failure)
                    self._stop.wait(1)
            uncommitted = uncommitted or bool(messages)
            if uncommitted and time.monotonic() - committed_at >= COMMIT_EVERY_S:
                committed_at, uncommitted = self._commit(), False

    def _commit(self) -> float:
        """Commit the positions of what was handled (at most every COMMIT_EVERY_S, not once per batch)."""
        try:
            self.consumer.commit(asynchronous=True)
        except KafkaException as err:
            log.warning("commit: %s", err)
        return time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        try:
            self.consumer.commit(asynchronous=False)  # the positions of what was handled
        except KafkaException as err:  # nothing consumed since the last commit
            log.debug("last commit: %s", err)
        self.consumer.close()
