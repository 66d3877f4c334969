"""The endpoint's Avro: what it writes is what confluent-kafka's AvroSerializer writes (auto.register.schemas
off, TopicRecordNameStrategy), and what it reads gives AvroDeserializer's records; a value that can never be
read is Unreadable (skipped), a registry that does not answer is RegistryDown (read again later)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema

from command_handler.adapters.avro_codec import frame_header, write_framed
from command_handler.config import load_settings
from command_handler.topology import load_topology
from open_bank_endpoint.errors import RegistryDown, Unreadable
from open_bank_endpoint.kafka import FramedRecords

TOPICS = load_settings({}).topics
RECORDS = load_topology(TOPICS.by_env()).records
TRANSFER = {
    "id": uuid.uuid4().bytes,
    "token": "a-token",
    "amount": 1234,
    "from": "NL66OPEN0000000000",
    "to": "NL12OPEN0123456789",
    "description": "rent",
}


def registry_with(name: str) -> tuple[Any, int]:
    client = SchemaRegistryClient.new_client({"url": "mock://endpoint-records-" + uuid.uuid4().hex})
    subject = f"{TOPICS.commands}-{RECORDS[name].full_name}"
    return client, int(client.register_schema(subject, Schema(RECORDS[name].schema_str, "AVRO")))


def test_a_command_is_written_as_avroserializer_writes_it() -> None:
    client, schema_id = registry_with("ConfirmMoneyTransfer")
    serializer = AvroSerializer(
        client,
        RECORDS["ConfirmMoneyTransfer"].schema_str,
        conf={"auto.register.schemas": False, "subject.name.strategy": topic_record_subject_name_strategy},
    )
    theirs = serializer(TRANSFER, SerializationContext(TOPICS.commands, MessageField.VALUE))
    schema = parse_schema(json.loads(RECORDS["ConfirmMoneyTransfer"].schema_str))
    assert write_framed(frame_header(schema_id), schema, TRANSFER) == theirs


def test_a_record_reads_as_avrodeserializer_reads_it_and_its_schema_is_asked_once() -> None:
    client, schema_id = registry_with("ConfirmMoneyTransfer")
    value = write_framed(
        frame_header(schema_id), parse_schema(json.loads(RECORDS["ConfirmMoneyTransfer"].schema_str)), TRANSFER
    )
    asked: list[int] = []
    get_schema = client.get_schema

    def counting(schema_id: int, *args: Any, **kwargs: Any) -> Any:
        asked.append(schema_id)
        return get_schema(schema_id, *args, **kwargs)

    client.get_schema = counting
    records = FramedRecords(client)
    expected = AvroDeserializer(client)(value, SerializationContext(TOPICS.commands, MessageField.VALUE))
    asked.clear()
    assert records.read(value) == expected == TRANSFER
    assert records.read(value) == TRANSFER
    assert asked == [schema_id]


class Registry:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_schema(self, schema_id: int) -> Any:
        raise self.error


def test_a_tombstone_is_nothing_to_read() -> None:
    assert FramedRecords(Registry(AssertionError("not asked"))).read(None) is None


@pytest.mark.parametrize("value", [b"", b"\x00\x00\x00", b"plain text", b"\x01\x00\x00\x00\x07body"])
def test_a_value_that_is_not_framed_avro_is_unreadable(value: bytes) -> None:
    with pytest.raises(Unreadable, match="not Confluent-framed"):
        FramedRecords(Registry(AssertionError("not asked"))).read(value)


def test_an_id_the_registry_does_not_know_is_unreadable() -> None:
    unknown = SchemaRegistryError(404, 40403, "Schema not found")
    with pytest.raises(Unreadable, match="schema id 987654"):
        FramedRecords(Registry(unknown)).read(frame_header(987_654) + b"\x00")


def test_a_body_that_does_not_decode_is_unreadable() -> None:
    client, schema_id = registry_with("ConfirmMoneyTransfer")
    with pytest.raises(Unreadable, match="cannot decode"):
        FramedRecords(client).read(frame_header(schema_id) + b"\x20")  # the 16 bytes of the id are missing


@pytest.mark.parametrize(
    "error", [ConnectionRefusedError("refused"), SchemaRegistryError(503, 50003, "unavailable")], ids=str
)
def test_a_registry_that_does_not_answer_is_down_and_the_record_reads_once_it_does(error: Exception) -> None:
    client, schema_id = registry_with("ConfirmMoneyTransfer")
    value = write_framed(
        frame_header(schema_id), parse_schema(json.loads(RECORDS["ConfirmMoneyTransfer"].schema_str)), TRANSFER
    )
    records = FramedRecords(Registry(error))
    with pytest.raises(RegistryDown):
        records.read(value)
    records.client = client  # it answers again
    assert records.read(value) == TRANSFER
