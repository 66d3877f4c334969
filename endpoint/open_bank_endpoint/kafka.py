"""Kafka for the endpoint: commands out (keyed by username, Avro, TopicRecordNameStrategy, schemas only looked
up), feedback and BalanceChanged in (one consumer thread of its own group over the three topics)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from command_handler.adapters.avro_codec import (
    frame_header,
    framed_schema_id,
    parse_schema_text,
    read_framed,
    refused_by_registry,
    write_framed,
)
from command_handler.adapters.schema_registry import SchemaRegistry
from command_handler.topology import load_topology
from open_bank_endpoint.config import EndpointSettings
from open_bank_endpoint.errors import NotYet, RegistryDown, Unreadable
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


class Commands:
    """The producer of commands, written with the registered versions of the two command records (Confluent
    framing, TopicRecordNameStrategy, nothing registered: what AvroSerializer with ``auto.register.schemas``
    off writes, through fastavro with each schema parsed once)."""

    def __init__(self, settings: EndpointSettings, registry: SchemaRegistry) -> None:
        kafka = settings.handler.kafka
        self.topic = settings.handler.topics.commands
        records = load_topology(settings.handler.topics.by_env()).records
        self._writers: dict[str, tuple[bytes, Any]] = {}  # record name -> (frame header, parsed schema)
        for name in COMMANDS:
            subject = f"{self.topic}-{records[name].full_name}"
            registered = registry.resolve(subject, records[name].schema_str)
            if registered is None:
                raise NotYet(f"subject {subject} (run `command-handler sync`, or the handler with --sync)")
            schema = parse_schema_text(registered.schema_str)
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


class FramedRecords:
    """Records in the Confluent framing, read with their writer schemas (asked of the registry once per id and
    parsed once), as AvroDeserializer without a reader schema reads them."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._schemas: dict[int, Any] = {}  # writer schema id -> parsed

    def read(self, value: bytes | None) -> Any:
        """The record, or None for a tombstone; Unreadable or RegistryDown."""
        if value is None:
            return None
        schema_id = framed_schema_id(value)
        if schema_id is None:
            raise Unreadable("not Confluent-framed Avro (no magic byte 0 and 4-byte schema id)")
        schema = self._schemas.get(schema_id)
        if schema is None:
            try:
                text = self.client.get_schema(schema_id).schema_str or ""
            except Exception as err:
                if refused_by_registry(err):
                    raise Unreadable(f"schema id {schema_id}: {err}") from err
                raise RegistryDown(f"schema id {schema_id}: {type(err).__name__}: {err}") from err
            try:
                schema = parse_schema_text(text)
            except Exception as err:
                raise Unreadable(f"schema id {schema_id} is not an Avro schema: {err}") from err
            if len(self._schemas) >= MAX_READ_SCHEMAS:
                self._schemas.clear()
            self._schemas[schema_id] = schema
        try:
            return read_framed(value, schema)
        except Exception as err:
            raise Unreadable(f"cannot decode with schema id {schema_id}: {type(err).__name__}: {err}") from err


class Answers:
    """The consumer of the feedback topics and balance_changed: decoded events handed to ``handle`` in batches
    (on its own thread). Offsets go to librdkafka's offset store once ``handle`` returned, and librdkafka commits
    what is stored every COMMIT_EVERY_S and on close: a batch not handled is never committed."""

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
                "enable.auto.commit": True,
                "auto.commit.interval.ms": int(COMMIT_EVERY_S * 1000),
                "enable.auto.offset.store": False,
                "session.timeout.ms": kafka.session_timeout_ms,
                "fetch.wait.max.ms": min(kafka.fetch_wait_max_ms, 100),
            }
        )
        listed = self.consumer.list_topics(timeout=10).topics
        missing = [t for t in (self.acf, self.mtf, self.bc) if t not in listed]
        if missing:
            self.consumer.close()
            raise NotYet(f"topics {', '.join(missing)} (run `command-handler sync`, or the handler with --sync)")
        self.records = FramedRecords(registry.client)  # used on the consumer's thread only
        self.handle = handle
        self.failure: str | None = None  # why the last batch could not be handled, while it cannot
        self._stop = threading.Event()
        self.consumer.subscribe([self.acf, self.mtf, self.bc])
        self._thread = threading.Thread(target=self._run, name="endpoint-consumer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _event(self, msg: Message) -> Event | None:
        topic = msg.topic()
        value = self.records.read(msg.value())
        if not isinstance(value, dict):
            return None
        try:
            if topic == self.bc:
                return Change(
                    value["iban"], value["new_balance"], value["changed_by"], value["from_to"], value["description"]
                )
            command_id = uuid.UUID(bytes=bytes(value["id"]))
        except (KeyError, TypeError, ValueError) as err:
            raise Unreadable(f"not a record of {topic}: {type(err).__name__}: {err}") from err
        if topic == self.acf:
            return AccountAnswer(command_id, value.get("iban"), value.get("token"), value.get("reason"))
        return TransferAnswer(command_id, value.get("reason"))

    def _until_handled(self, what: str, attempt: Callable[[], Any]) -> tuple[bool, Any]:
        """Call ``attempt`` until it succeeds (True, its result) or the consumer stops (False, None); while it
        fails (the database or the registry away) the batch is kept and ``failure`` says why."""
        while not self._stop.is_set():
            try:
                result = attempt()
                self.failure = None
                return True, result
            except Exception as err:
                reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
                self.failure = f"could not {what}: {reason}"
                log.warning("%s, retrying in 1 s", self.failure)
                self._stop.wait(1)
        return False, None

    def _read(self, msg: Message) -> Event | None:
        try:
            return self._event(msg)
        except RegistryDown:
            raise
        except Exception as err:  # never a stuck consumer for a record that can never be read
            log.warning("skipped %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), err)
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            # consume() waits its whole timeout unless the batch fills: wait for one, then take what is there
            first = self.consumer.poll(0.1)
            messages = [] if first is None else [first, *self.consumer.consume(499, timeout=0)]
            events: list[Event] = []
            positions: dict[tuple[str, int], int] = {}
            for msg in messages:
                if msg.error() is not None:
                    log.warning("consumer: %s", msg.error())
                    continue
                read, event = self._until_handled(f"read {msg.topic()}[{msg.partition()}]", partial(self._read, msg))
                if not read:
                    return  # stopping: nothing of this batch is stored, so nothing of it is committed
                if event is not None:
                    events.append(event)
                positions[(str(msg.topic()), msg.partition() or 0)] = (msg.offset() or 0) + 1
            if not positions:
                continue
            if events and not self._until_handled(f"store {len(events)} events", partial(self.handle, events))[0]:
                return
            try:
                self.consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()])
            except KafkaException as err:  # partitions taken away meanwhile: theirs are read again elsewhere
                log.info("offsets not stored: %s", err)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()  # commits what is stored: the positions of what was handled
