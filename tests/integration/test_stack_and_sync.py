"""``command-handler stack`` and ``command-handler sync`` on a stack of their own."""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from sqlalchemy import text

from command_handler.adapters.database import drop_database, make_engine
from command_handler.bootstrap import synchronize
from command_handler.config import load_settings
from command_handler.retry import NotReady
from command_handler.service_layer.synchronizer import SyncError
from command_handler.topology import load_topology
from open_bank_devtools.stack.local_stack import LocalStack, StackError

from ..conftest import Services, free_port, processes_under, stack_config_on_free_ports, stack_directory

pytestmark = pytest.mark.integration

# the four topics of the contract, and the handler's dead-letter topic
CONTRACT_TOPICS = {
    "commands",
    "account_creation_feedback",
    "money_transfer_feedback",
    "balance_changed",
    "commands.dlq",
}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "command_handler", *args],
        env={**env, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=180,
    )


def listed_topics(admin: AdminClient, expect: set[str] = CONTRACT_TOPICS, timeout_s: float = 15) -> dict[str, Any]:
    """The topics in the broker's metadata (internal ones left out), once they are ``expect`` or after
    ``timeout_s``: Kafka's metadata follows a creation or deletion a moment later."""
    deadline = time.monotonic() + timeout_s
    while True:
        topics = {name: t for name, t in admin.list_topics(timeout=10).topics.items() if not name.startswith("__")}
        if set(topics) == expect or time.monotonic() > deadline:
            return topics
        time.sleep(0.1)


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of a stack's env file (``export NAME=value`` lines)."""
    pairs = (line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines() if line)
    return {name: value for name, value in pairs}


@pytest.fixture(scope="module")
def own_stack(services: Services) -> Iterator[dict[str, str]]:
    """A stack of this module's own (broker, registry, PostgreSQL), driven through the CLI: the environment to reach it."""
    if services.stack is None:
        pytest.skip("external services: the local stack is not used")
    directory = stack_directory("own-stack")
    env = {
        **services.env,
        "STACK_DIR": str(directory),
        "STACK_BROKER": services.stack.config.broker,
        "STACK_BROKER_PORT": str(free_port()),
        "STACK_CONTROLLER_PORT": str(free_port()),
        "STACK_REGISTRY_PORT": str(free_port()),
        "STACK_REGISTRY_HEALTH_PORT": str(free_port()),
        "STACK_DB_PORT": str(free_port()),
        "STACK_ENDPOINT_PORT": str(free_port()),
        "STACK_POSTGRES": "own" if services.stack.cluster is not None else "external",
        "STACK_REGISTRY_DB": "schema_registry_own_stack",
    }
    if services.stack.cluster is None:
        drop_database(services.settings().database.admin_url, "schema_registry_own_stack")
    up = cli(env, "stack", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "local stack is up" in up.stdout
    assert "postgres://" not in up.stdout, "the admin URL's password is not printed"
    assert f"the bank's page at http://127.0.0.1:{env['STACK_ENDPOINT_PORT']}/" in up.stdout
    env.update(read_env_file(directory / "env"))
    assert env["KAFKA_BROKERS"] == f"127.0.0.1:{env['STACK_BROKER_PORT']}"
    assert env["SCHEMA_REGISTRY_URL"] == f"http://127.0.0.1:{env['STACK_REGISTRY_PORT']}/apis/ccompat/v7"
    try:
        yield env
    finally:
        down = cli(env, "stack", "down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert processes_under(directory) == {}


def test_sync_makes_exactly_the_contract_topics_and_subjects_and_is_idempotent(own_stack: dict[str, str]) -> None:
    first = cli(own_stack, "sync")
    assert first.returncode == 0, first.stdout + first.stderr
    for topic in CONTRACT_TOPICS:
        assert f"topic {topic}: created" in first.stdout
    assert first.stdout.count(": registered, id") == 7

    admin = AdminClient({"bootstrap.servers": own_stack["KAFKA_BROKERS"]})
    topics = listed_topics(admin)
    assert set(topics) == CONTRACT_TOPICS
    assert all(len(t.partitions) == 24 for t in topics.values())
    configs = admin.describe_configs([ConfigResource("topic", "commands")])
    for future in configs.values():
        assert future.result()["retention.ms"].value == "-1"
    registry = SchemaRegistryClient({"url": own_stack["SCHEMA_REGISTRY_URL"]})
    assert set(registry.get_subjects()) == set(load_topology().subjects())

    second = cli(own_stack, "sync")
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and ": registered" not in second.stdout
    assert second.stdout.count("already there") == 5 + 7
    assert "nothing to change" in second.stdout
    assert set(listed_topics(admin)) == CONTRACT_TOPICS
    assert all(registry.get_versions(s) == [1] for s in registry.get_subjects())


def test_prune_deletes_only_unknown_topics(own_stack: dict[str, str], unique: str) -> None:
    admin = AdminClient({"bootstrap.servers": own_stack["KAFKA_BROKERS"]})
    from confluent_kafka.admin import NewTopic

    admin.create_topics([NewTopic(f"stray-{unique}", 1, 1)])[f"stray-{unique}"].result()
    kept = cli(own_stack, "sync")
    assert f"stray-{unique}" in listed_topics(admin, CONTRACT_TOPICS | {f"stray-{unique}"}), kept.stdout
    pruned = cli(own_stack, "sync", "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert f"topic stray-{unique}: deleted" in pruned.stdout
    assert set(listed_topics(admin)) == CONTRACT_TOPICS


def test_stack_up_twice_is_safe_and_status_reports_running(own_stack: dict[str, str]) -> None:
    again = cli(own_stack, "stack", "up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"broker: {own_stack['STACK_BROKER']} already running" in again.stdout
    assert "registry: apicurio already running" in again.stdout
    assert "postgres: already running" in again.stdout
    assert "endpoint: graphql-endpoint already running" in again.stdout
    status = cli(own_stack, "stack", "status")
    assert status.returncode == 0
    assert status.stdout.count("answering") == 3
    assert f"broker: {own_stack['STACK_BROKER']} running" in status.stdout
    pid = (Path(own_stack["STACK_DIR"]) / "registry.pid").read_text().strip()
    assert f"registry: Apicurio Registry running (pid {pid})" in status.stdout
    assert f"{own_stack['SCHEMA_REGISTRY_URL']} ready" in status.stdout


def test_down_then_up_keeps_topics_offsets_and_balances(own_stack: dict[str, str], unique: str) -> None:
    if own_stack["STACK_BROKER"] != "kafka":
        pytest.skip("Tansu keeps everything in memory: only Apache Kafka keeps data across a restart")
    assert cli(own_stack, "sync").returncode == 0
    brokers = own_stack["KAFKA_BROKERS"]
    producer = Producer({"bootstrap.servers": brokers})
    for n in range(3):
        producer.produce("commands", key=b"kept", value=f"record {n} {unique}".encode(), partition=0)
    assert producer.flush(10) == 0
    group = f"kept-{unique}"
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
    end = consumer.get_watermark_offsets(TopicPartition("commands", 0), timeout=10)[1]
    deadline = time.monotonic() + 60
    while True:  # a broker just (re)started may not have loaded its group coordinator yet
        try:
            consumer.commit(offsets=[TopicPartition("commands", 0, end)], asynchronous=False)
            break
        except KafkaException as err:
            if not err.args[0].retriable() or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    consumer.close()
    settings = load_settings(own_stack)
    engine = make_engine(settings.database)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO balance (username, iban, token, amount) VALUES (:u, :i, :t, 4242)"),
            {"u": f"kept-{unique}", "i": f"NL00KEPT{unique}", "t": "0" * 20},
        )
    engine.dispose()

    assert cli(own_stack, "stack", "down").returncode == 0
    up = cli(own_stack, "stack", "up")
    assert up.returncode == 0, up.stdout + up.stderr

    admin = AdminClient({"bootstrap.servers": brokers})
    assert set(listed_topics(admin)) >= CONTRACT_TOPICS
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group})
    assert consumer.committed([TopicPartition("commands", 0)], timeout=10)[0].offset == end
    assert consumer.get_watermark_offsets(TopicPartition("commands", 0), timeout=10)[1] == end
    consumer.close()
    engine = make_engine(settings.database)
    with engine.connect() as conn:
        amount = conn.execute(text("SELECT amount FROM balance WHERE username = :u"), {"u": f"kept-{unique}"})
        assert amount.scalar_one() == 4242
    engine.dispose()


def test_down_then_up_keeps_every_schema_id(own_stack: dict[str, str], unique: str) -> None:
    """Apicurio keeps its state in the stack's PostgreSQL: records in Kafka go on naming valid ids."""
    assert cli(own_stack, "sync").returncode == 0
    registry = SchemaRegistryClient({"url": own_stack["SCHEMA_REGISTRY_URL"]})
    fields = [{"name": "a", "type": "long"}]
    extra = Schema(
        json.dumps({"type": "record", "name": f"Kept{unique}", "namespace": "test", "fields": fields}), "AVRO"
    )
    extra_id = registry.register_schema(f"kept-{unique}-value", extra)
    before = {s: registry.get_latest_version(s) for s in registry.get_subjects()}
    assert len(before) >= 8

    assert cli(own_stack, "stack", "down").returncode == 0
    up = cli(own_stack, "stack", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "registry: apicurio started" in up.stdout

    fresh = SchemaRegistryClient({"url": own_stack["SCHEMA_REGISTRY_URL"]})  # no cache of the old answers
    after = {s: fresh.get_latest_version(s) for s in fresh.get_subjects()}
    assert {s: (v.schema_id, v.version) for s, v in after.items()} == {
        s: (v.schema_id, v.version) for s, v in before.items()
    }
    assert fresh.get_schema(extra_id).schema_str is not None
    resync = cli(own_stack, "sync")
    assert resync.returncode == 0 and ": registered" not in resync.stdout, resync.stdout
    new_id = fresh.register_schema(f"new-{unique}-value", Schema(extra.schema_str.replace("Kept", "New"), "AVRO"))
    assert new_id not in {v.schema_id for v in before.values()}  # ids handed out later do not reuse old ones


def test_sync_reports_an_incompatible_registered_schema_by_subject(services: Services, unique: str) -> None:
    topic = f"conflict_{unique}"
    subject = f"{topic}-nl.openweb.data.ConfirmAccountCreation"
    registry = SchemaRegistryClient({"url": services.env["SCHEMA_REGISTRY_URL"]})
    incompatible = '{"type":"record","name":"ConfirmAccountCreation","namespace":"nl.openweb.data","fields":[{"name":"x","type":"int"}]}'
    registry.register_schema(subject, Schema(incompatible, "AVRO"))
    with pytest.raises(SyncError, match=subject):
        synchronize(services.settings(KAFKA_COMMAND_TOPIC=topic))


def test_sync_gives_up_on_an_unreachable_broker_with_a_clear_message(services: Services) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(NotReady, match=f"Kafka at {dead}"):
        synchronize(services.settings(KAFKA_BROKERS=dead, STARTUP_TIMEOUT_S="2"))
    result = cli({**services.env, "KAFKA_BROKERS": dead, "STARTUP_TIMEOUT_S": "2"}, "sync")
    assert result.returncode == 1
    assert f"Kafka at {dead}" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_a_taken_port_is_a_clear_error_and_down_stops_everything(services: Services) -> None:
    tmp_path = stack_directory("taken-port")
    if services.stack is None:
        pytest.skip("external services")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    config = replace(stack_config_on_free_ports(tmp_path), registry_port=taken)
    stack = LocalStack(config, services.settings(), out=lambda line: None)
    try:
        with pytest.raises(StackError, match=f"port {taken} is already in use"):
            stack.up(timeout_s=30)
    finally:
        blocker.close()
        stack.down()
    # whatever up started before failing (the broker) is stopped and forgotten
    assert not list(tmp_path.glob("*.pid"))
    assert (tmp_path / "broker.log").exists()  # it was started
    assert processes_under(tmp_path) == {}  # and it is gone


def test_bad_configuration_exits_2_listing_the_problem(services: Services) -> None:
    result = cli({**services.env, "DB_PORT": "eighty"}, "sync")
    assert result.returncode == 2
    assert "DB_PORT='eighty' is not a whole number" in result.stderr


def test_help_lists_the_environment_variables() -> None:
    for args, variable in (
        ((), "DB_HOSTNAME"),
        (("sync",), "SCHEMA_REGISTRY_URL"),
        (("migrate",), "DB_HOSTNAME"),
        (("stack",), "DB_ADMIN_URL"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "command_handler", *args, "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0
        assert "environment variables:" in result.stdout
        assert variable in result.stdout, args
