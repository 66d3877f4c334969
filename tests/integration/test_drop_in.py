"""Dropped into a running reference deployment: its registry already holds the Java-generated texts of
the seven schemas (every string with ``avro.java.string``), which a lookup of our plain texts does not
find. `sync` must register nothing, and the handler must answer the contract writing with their ids."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from command_handler.topology import load_topology
from open_bank_devtools.loadtest.bank_client import BankClient

from ..conftest import Services
from .handler_process import HandlerProcess, World, isolated_world

pytestmark = pytest.mark.integration


def java_generated(schema: Any) -> Any:
    """A schema as the reference's synchronizer registers it: every string type with avro.java.string."""
    if schema == "string":
        return {"type": "string", "avro.java.string": "String"}
    if isinstance(schema, list):
        return [java_generated(s) for s in schema]
    if isinstance(schema, dict):
        if "fields" in schema:
            return {**schema, "fields": [{**f, "type": java_generated(f["type"])} for f in schema["fields"]]}
        return schema
    return schema


@pytest.fixture
def reference_world(services: Services) -> Iterator[tuple[World, dict[str, int]]]:
    with isolated_world(services.env, "dropin" + uuid4().hex[:8]) as world:
        registry = SchemaRegistryClient({"url": world.settings.registry.url})
        topology = load_topology(world.settings.topics.by_env())
        registered = {}
        for subject, record in topology.subjects().items():
            text = json.dumps(java_generated(json.loads(record.schema_str)))
            registered[subject] = registry.register_schema(subject, Schema(text, "AVRO"))
        yield world, registered


def cli(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "command_handler", *args],
        env={**world.env, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sync_registers_nothing_and_the_handler_answers_with_the_reference_ids(
    reference_world: tuple[World, dict[str, int]], tmp_path: Path
) -> None:
    world, registered = reference_world
    registry = SchemaRegistryClient({"url": world.settings.registry.url})
    result = cli(world, "sync")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": registered" not in result.stdout
    topology = load_topology(world.settings.topics.by_env())
    for subject, schema_id in registered.items():
        assert f"subject {subject}: already there, id {schema_id}" in result.stdout
        assert registry.get_versions(subject) == [1]
        plain = topology.subjects()[subject].schema_str
        if "string" not in plain:
            continue  # MoneyTransferConfirmed: no string, the same text in Java and here
        assert "avro.java.string" in (registry.get_version(subject, 1).schema.schema_str or "")
        with pytest.raises(SchemaRegistryError) as err:  # the registry does not find them by our plain texts
            registry.lookup_schema(subject, Schema(plain, "AVRO"))
        assert err.value.error_code == 40403

    handler = HandlerProcess(world, tmp_path, sync=False).wait_ready()
    client = BankClient(world.settings)
    try:
        opened = client.wait_for(client.open_account("gus"))
        assert opened.record == "AccountCreationConfirmed"
        deposit = client.wait_for(client.transfer("gus", "", 4_000, "cash", opened.value["iban"], "in"))
        assert deposit.record == "MoneyTransferConfirmed"
        pay = client.transfer("gus", opened.value["token"], 1_000, opened.value["iban"], "NL66OPEN0000000000", "out")
        assert client.wait_for(pay).record == "MoneyTransferConfirmed"
        refused = client.wait_for(client.transfer("gus", "wrong", 1, opened.value["iban"], "NL66OPEN0000000000", "x"))
        assert refused.record == "MoneyTransferFailed" and refused.value["reason"] == "invalid token"
        nameless = client.wait_for(client.open_account(""))
        assert nameless.record == "AccountCreationFailed"
        events = client.wait_events(opened.value["iban"], 2)
        assert [e.value["new_balance"] for e in events] == [4_000, 3_000]
        topics = world.settings.topics
        written = {
            f"{topics.account_creation_feedback}-nl.openweb.data.AccountCreationConfirmed": opened.schema_id,
            f"{topics.money_transfer_feedback}-nl.openweb.data.MoneyTransferConfirmed": deposit.schema_id,
            f"{topics.balance_changed}-nl.openweb.data.BalanceChanged": events[0].schema_id,
            f"{topics.money_transfer_feedback}-nl.openweb.data.MoneyTransferFailed": refused.schema_id,
            f"{topics.account_creation_feedback}-nl.openweb.data.AccountCreationFailed": nameless.schema_id,
        }
        for subject, schema_id in written.items():
            assert schema_id == registered[subject], subject
    finally:
        client.close()
        assert handler.terminate() == 0
    for subject in registered:
        assert registry.get_versions(subject) == [1]  # the handler registered nothing either
