"""Commands from Kafka bytes, outcomes to Kafka messages: Avro in the Confluent wire format.

The framing is Confluent's: byte 0, the schema id (4 bytes, big-endian), the Avro
binary body, written and read by fastavro's schemaless writer and reader. The
registry is asked what confluent_kafka's AvroSerializer and AvroDeserializer
ask it, through the same SchemaRegistryClient (which caches its answers):

* writing, the id of each output subject (TopicRecordNameStrategy, with
  ``auto.register.schemas=false``): ``lookup_schema(subject, writer text)`` the
  first time the subject is written, then cached here with its parsed schema;
* reading, the writer schema of an id: ``get_schema(id)`` the first time the id
  is seen; it is parsed once and resolved against our own reader schema of
  that record (so a compatible newer writer schema still decodes), and when
  both encode alike (same Parsing Canonical Form) the body is read with the
  writer schema alone.

Anything that cannot become a command is a ``PoisonMessage``; a registry that
cannot be reached is ``RegistryUnavailable`` (retry, never set the message aside
for that).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from io import BytesIO
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from command_handler.adapters.registry_client import Schema, SchemaRegistryClient, SchemaRegistryError
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


# Avro records of the domain's values: UUIDs as their 16 bytes, ``from_`` as ``from``; a BalanceChanged's
# username is its key, not a field. One function per type: no reflection per message.
_RECORDS: dict[type, Callable[[Any], dict[str, Any]]] = {
    AccountCreationConfirmed: lambda v: {"id": v.id.bytes, "iban": v.iban, "token": v.token},
    AccountCreationFailed: lambda v: {"id": v.id.bytes, "reason": v.reason},
    MoneyTransferConfirmed: lambda v: {"id": v.id.bytes},
    MoneyTransferFailed: lambda v: {"id": v.id.bytes, "reason": v.reason},
    BalanceChanged: lambda v: {
        "iban": v.iban,
        "new_balance": v.new_balance,
        "changed_by": v.changed_by,
        "from_to": v.from_to,
        "description": v.description,
    },
}


def parse_schema_text(schema_str: str) -> Any:
    """fastavro's parsed form of a schema text (parsed once; the result is cached by the caller)."""
    return parse_schema(json.loads(schema_str))


def _canonical(parsed: Any) -> str:
    return str(to_parsing_canonical_form(parsed))


# -- the Confluent framing, for any record (the endpoint writes and reads its records with these too) --------


def frame_header(schema_id: int) -> bytes:
    """The 5 bytes before a record's Avro body: the magic byte and the schema id, big-endian."""
    return bytes((MAGIC_BYTE,)) + schema_id.to_bytes(4, "big")


def framed_schema_id(value: bytes | None) -> int | None:
    """The schema id of a Confluent-framed value, or None when the value is not framed so."""
    if value is None or len(value) < HEADER_SIZE or value[0] != MAGIC_BYTE:
        return None
    return int.from_bytes(value[1:HEADER_SIZE], "big")


def write_framed(header: bytes, schema: Any, record: Mapping[str, Any]) -> bytes:
    """A record as Kafka bytes: ``header`` (frame_header of its id), then its body in the parsed ``schema``."""
    out = BytesIO()
    out.write(header)
    schemaless_writer(out, schema, record)
    return out.getvalue()


def read_framed(value: bytes, writer: Any, reader: Any = None) -> Any:
    """The record in a framed value, read with the parsed writer schema (resolved to ``reader`` if given)."""
    body = BytesIO(value)
    body.seek(HEADER_SIZE)
    return schemaless_reader(body, writer, reader)


@dataclass(frozen=True)
class _Writer:
    """What one output subject is written with: the registered id's 5-byte header and the parsed schema."""

    header: bytes
    schema: Any


@dataclass(frozen=True)
class _Reader:
    """How the records of one writer schema id are read: the writer's parsed schema, and our reader
    schema when the two differ in what decides the encoding (None: read with the writer's alone)."""

    name: str
    writer: Any
    reader: Any


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
        records = topology.records
        self._destinations = {
            AccountCreationConfirmed: topics.account_creation_feedback,
            AccountCreationFailed: topics.account_creation_feedback,
            MoneyTransferConfirmed: topics.money_transfer_feedback,
            MoneyTransferFailed: topics.money_transfer_feedback,
            BalanceChanged: topics.balance_changed,
        }
        writers = writer_schemas or {}
        # per output type: (topic, subject, the text written with); its id is looked up on first use
        self._outputs: dict[type, tuple[str, str, str]] = {}
        for kind, topic in self._destinations.items():
            subject = f"{topic}-{records[kind.__name__].full_name}"
            self._outputs[kind] = (topic, subject, writers.get(subject, records[kind.__name__].schema_str))
        self._writers: dict[type, _Writer] = {}
        # our reader schemas of the command records, by full name: parsed, and their canonical form
        self._reader_schemas: dict[str, tuple[Any, str]] = {}
        for name in COMMAND_RECORDS:
            parsed = parse_schema_text(records[name].schema_str)
            self._reader_schemas[records[name].full_name] = (parsed, _canonical(parsed))
        self._readers: dict[int, _Reader] = {}
        self._lock = threading.Lock()
        self.unknown_schema_grace_s = unknown_schema_grace_s
        self._clock = clock
        self._unknown_since: dict[int, float] = {}  # schema id -> when the registry first did not know it

    # -- decoding ---------------------------------------------------------------

    def _reader(self, schema_id: int) -> _Reader:
        """How to read records of ``schema_id``: the registry's writer schema of it, parsed once."""
        cached = self._readers.get(schema_id)
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
        ours = self._reader_schemas.get(name)
        if ours is None:
            raise PoisonMessage(f"{name} (schema id {schema_id}) is not a command record", "not-a-command")
        try:
            writer = parse_schema(parsed)
            reader = None if _canonical(writer) == ours[1] else ours[0]
        except Exception as err:
            raise PoisonMessage(
                f"cannot decode {name}: schema id {schema_id} is not a valid Avro schema: {err}", "undecodable"
            ) from err
        found = _Reader(name, writer, reader)
        with self._lock:
            if len(self._readers) >= 10_000:  # hostile input with ever new ids: keep memory bounded
                self._readers.clear()
            self._readers[schema_id] = found
        return found

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
        schema_id = framed_schema_id(value)
        if schema_id is None:
            raise PoisonMessage("not Confluent-framed Avro (no magic byte 0 and 4-byte schema id)", "not-avro")
        reader = self._reader(schema_id)
        name = reader.name
        try:
            record = read_framed(value, reader.writer, reader.reader)
            if not isinstance(record, dict):
                raise TypeError("no record")
            command_id = uuid.UUID(bytes=record["id"])
            if name.endswith(".ConfirmAccountCreation"):
                return ConfirmAccountCreation(command_id, record["username"])
            return ConfirmMoneyTransfer(
                command_id, record["token"], record["amount"], record["from"], record["to"], record["description"]
            )
        except Exception as err:
            raise PoisonMessage(f"cannot decode {name}: {type(err).__name__}: {err}", "undecodable") from err

    # -- encoding ---------------------------------------------------------------

    def _writer(self, kind: type) -> _Writer:
        """The id and parsed schema of an output type's subject: looked up in the registry the first time
        (as AvroSerializer with ``auto.register.schemas=false`` does), then kept."""
        cached = self._writers.get(kind)
        if cached is not None:
            return cached
        _, subject, schema_str = self._outputs[kind]
        try:
            registered = self.client.lookup_schema(subject, Schema(schema_str, "AVRO"))
        except Exception as err:
            if _is_registry_error(err) and not refused_by_registry(err):
                raise RegistryUnavailable(f"looking up {subject}: {type(err).__name__}: {err}") from err
            raise
        schema_id = int(registered.schema_id)  # type: ignore[arg-type]
        found = _Writer(frame_header(schema_id), parse_schema_text(schema_str))
        with self._lock:
            self._writers[kind] = found
        return found

    def _message(self, value: Any, key: bytes | None) -> OutMessage:
        kind = type(value)
        writer = self._writer(kind)
        return OutMessage(
            self._destinations[kind], key, write_framed(writer.header, writer.schema, _RECORDS[kind](value))
        )

    def encode(self, command_key: bytes | None, outcome: Outcome) -> list[OutMessage]:
        """The answer (keyed like the command) and the BalanceChanged events (keyed by account owner)."""
        messages = [self._message(outcome.feedback, command_key)]
        messages += [self._message(event, event.username.encode()) for event in outcome.events]
        return messages


def refused_by_registry(err: BaseException) -> bool:
    """A registry answer that waiting will not change (a 4xx other than auth, time-out, rate limit)."""
    if not isinstance(err, SchemaRegistryError):
        return False
    status = err.http_status_code
    return status is not None and 400 <= status < 500 and status not in (401, 403, 408, 429)
