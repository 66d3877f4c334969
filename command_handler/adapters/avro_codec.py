"""Commands from Kafka bytes, outcomes to Kafka messages: Avro in the Confluent wire format.

Serialization uses confluent_kafka's AvroSerializer with ``auto.register.schemas=false``
and the TopicRecordNameStrategy; deserialization uses AvroDeserializer with our own
reader schemas (so a compatible newer writer schema still decodes). Anything that
cannot become a command is a ``PoisonMessage``; a registry that cannot be reached
is ``RegistryUnavailable`` (retry, never set the message aside for that).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from command_handler.config import Topics
from command_handler.domain.model import (
    AccountCreationConfirmed,
    AccountCreationFailed,
    BalanceChanged,
    Command,
    ConfirmAccountCreation,
    ConfirmMoneyTransfer,
    MoneyTransferConfirmed,
    MoneyTransferFailed,
    Outcome,
    OutMessage,
)
from command_handler.errors import PoisonMessage, RegistryUnavailable, SchemaNotYetKnown
from command_handler.topology import Topology

MAGIC_BYTE = 0
HEADER_SIZE = 5  # magic byte + 4-byte schema id
COMMAND_RECORDS = ("ConfirmAccountCreation", "ConfirmMoneyTransfer")


def _is_registry_error(err: BaseException) -> bool:
    return isinstance(err, SchemaRegistryError | OSError) or type(err).__module__.startswith(("httpx", "httpcore"))


def _registry_failure(err: BaseException, what: str, unknown: Callable[[], Exception] | None = None) -> Exception:
    """A registry error as PoisonMessage (the id is refused, or unknown and ``unknown`` is not given),
    RegistryUnavailable (try later), or what ``unknown`` makes of a 404."""
    if isinstance(err, SchemaRegistryError):
        status = err.http_status_code
        if status == 404:
            return unknown() if unknown is not None else PoisonMessage(f"unknown {what}", "unknown-schema")
        if status is not None and 400 <= status < 500 and status not in (401, 403, 408, 429):
            return PoisonMessage(f"{what} refused by the registry: {err}", "unknown-schema")
    if _is_registry_error(err):
        return RegistryUnavailable(f"{type(err).__name__}: {err}")
    raise err


def _full_name(schema: dict[str, Any]) -> str:
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _to_record(value: Any) -> dict[str, Any]:
    """Avro record of a domain value: UUIDs as their 16 bytes, ``from_`` as ``from``."""
    record: dict[str, Any] = {}
    for field, item in vars(value).items():
        if field == "username" and isinstance(value, BalanceChanged):
            continue  # the key, not a field
        record["from" if field == "from_" else field] = item.bytes if isinstance(item, uuid.UUID) else item
    return record


class AvroCodec:
    def __init__(
        self,
        client: SchemaRegistryClient,
        topology: Topology,
        topics: Topics,
        writer_schemas: Mapping[str, str] | None = None,
        unknown_schema_grace_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``writer_schemas``: per subject, the registered text to write with (it means ours, see
        ``SchemaRegistry.resolve``); a subject not given is written with our own text.
        ``unknown_schema_grace_s``: how long a schema id the registry does not know is waited for
        (``SchemaNotYetKnown``) before its records are poison; once an id was waited for that long,
        later records with it are poison at once (the registry is still asked each time)."""
        self.client = client
        self.command_topic = topics.commands
        strategy = {"subject.name.strategy": topic_record_subject_name_strategy}
        records = topology.records
        self._destinations = {
            AccountCreationConfirmed: topics.account_creation_feedback,
            AccountCreationFailed: topics.account_creation_feedback,
            MoneyTransferConfirmed: topics.money_transfer_feedback,
            MoneyTransferFailed: topics.money_transfer_feedback,
            BalanceChanged: topics.balance_changed,
        }
        writers = writer_schemas or {}
        self._serializers = {
            kind: AvroSerializer(
                client,
                writers.get(f"{topic}-{records[kind.__name__].full_name}", records[kind.__name__].schema_str),
                conf={"auto.register.schemas": False, **strategy},
            )
            for kind, topic in self._destinations.items()
        }
        self._deserializers = {
            records[name].full_name: AvroDeserializer(client, records[name].schema_str, conf=strategy)
            for name in COMMAND_RECORDS
        }
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()
        self.unknown_schema_grace_s = unknown_schema_grace_s
        self._clock = clock
        self._unknown_since: dict[int, float] = {}  # schema id -> when the registry first did not know it

    # -- decoding ---------------------------------------------------------------

    def _record_name(self, schema_id: int) -> str:
        with self._lock:
            cached = self._names.get(schema_id)
        if cached is not None:
            return cached
        try:
            schema = self.client.get_schema(schema_id)
        except Exception as err:
            raise _registry_failure(err, f"schema id {schema_id}", partial(self._unknown, schema_id)) from err
        try:
            parsed = json.loads(schema.schema_str or "")
        except ValueError as err:
            raise PoisonMessage(f"schema id {schema_id} is not an Avro record schema", "not-a-command") from err
        name = _full_name(parsed) if isinstance(parsed, dict) else str(parsed)
        with self._lock:
            self._names[schema_id] = name
        return name

    def _unknown(self, schema_id: int) -> Exception:
        """The registry answered 404 for ``schema_id``: wait for it while the grace lasts, then give up."""
        now = self._clock()
        with self._lock:
            if len(self._unknown_since) >= 10_000:  # hostile input with ever new ids: keep memory bounded
                self._unknown_since.clear()
            first = self._unknown_since.setdefault(schema_id, now)
        if now - first < self.unknown_schema_grace_s:
            return SchemaNotYetKnown(
                f"schema id {schema_id} is unknown to the registry; waiting up to "
                f"{self.unknown_schema_grace_s:g}s in case it lags behind the producer's"
            )
        return PoisonMessage(
            f"unknown schema id {schema_id} (the registry did not know it for {self.unknown_schema_grace_s:g}s)",
            "unknown-schema",
        )

    def decode_command(self, value: bytes | None) -> Command:
        if value is None:
            raise PoisonMessage("null value", "null-value")
        if len(value) < HEADER_SIZE or value[0] != MAGIC_BYTE:
            raise PoisonMessage("not Confluent-framed Avro (no magic byte 0 and 4-byte schema id)", "not-avro")
        schema_id = int.from_bytes(value[1:HEADER_SIZE], "big")
        name = self._record_name(schema_id)
        deserializer = self._deserializers.get(name)
        if deserializer is None:
            raise PoisonMessage(f"{name} (schema id {schema_id}) is not a command record", "not-a-command")
        try:
            record = deserializer(value, SerializationContext(self.command_topic, MessageField.VALUE))
        except Exception as err:
            if _is_registry_error(err):
                raise _registry_failure(err, f"schema id {schema_id}", partial(self._unknown, schema_id)) from err
            raise PoisonMessage(f"cannot decode {name}: {type(err).__name__}: {err}", "undecodable") from err
        if not isinstance(record, dict):
            raise PoisonMessage(f"cannot decode {name}: no record", "undecodable")
        command_id = uuid.UUID(bytes=record["id"])
        if name.endswith(".ConfirmAccountCreation"):
            return ConfirmAccountCreation(command_id, record["username"])
        return ConfirmMoneyTransfer(
            command_id, record["token"], record["amount"], record["from"], record["to"], record["description"]
        )

    # -- encoding ---------------------------------------------------------------

    def _message(self, value: Any, key: bytes | None) -> OutMessage:
        topic = self._destinations[type(value)]
        data = self._serializers[type(value)](_to_record(value), SerializationContext(topic, MessageField.VALUE))
        assert data is not None
        return OutMessage(topic, key, data)

    def encode(self, command_key: bytes | None, outcome: Outcome) -> list[OutMessage]:
        """The answer (keyed like the command) and the BalanceChanged events (keyed by account owner)."""
        messages = [self._message(outcome.feedback, command_key)]
        messages += [self._message(event, event.username.encode()) for event in outcome.events]
        return messages
