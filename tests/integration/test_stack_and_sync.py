"""``command-handler stack`` and ``command-handler sync`` on a stack of their own."""

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from command_handler.adapters.database import drop_database
from command_handler.bootstrap import synchronize
from command_handler.localstack.stack import LocalStack, StackConfig, StackError
from command_handler.retry import NotReady
from command_handler.service_layer.synchronizer import SyncError
from command_handler.topology import load_topology

from ..conftest import Services, free_port, processes_under

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


@pytest.fixture(scope="module")
def own_stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A stack of this module's own, driven through the CLI: the environment to reach it."""
    if services.stack is None:
        pytest.skip("external services: the local stack is not used")
    directory = tmp_path_factory.mktemp("own-stack")
    env = {
        **services.env,
        "STACK_DIR": str(directory),
        "STACK_BROKER_PORT": str(free_port()),
        "STACK_REGISTRY_PORT": str(free_port()),
        "STACK_REGISTRY_DB": "schema_registry_own_stack",
    }
    settings = services.settings()
    drop_database(settings.database.admin_url, "schema_registry_own_stack")
    up = cli(env, "stack", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "local stack is up" in up.stdout
    env["KAFKA_BROKERS"] = f"127.0.0.1:{env['STACK_BROKER_PORT']}"
    env["SCHEMA_REGISTRY_URL"] = f"http://127.0.0.1:{env['STACK_REGISTRY_PORT']}"
    try:
        yield env
    finally:
        down = cli(env, "stack", "down")
        assert down.returncode == 0, down.stdout + down.stderr
        drop_database(settings.database.admin_url, "schema_registry_own_stack")


def test_sync_makes_exactly_the_contract_topics_and_subjects_and_is_idempotent(own_stack: dict[str, str]) -> None:
    first = cli(own_stack, "sync")
    assert first.returncode == 0, first.stdout + first.stderr
    for topic in CONTRACT_TOPICS:
        assert f"topic {topic}: created" in first.stdout
    assert first.stdout.count(": registered, id") == 7

    admin = AdminClient({"bootstrap.servers": own_stack["KAFKA_BROKERS"]})
    topics = admin.list_topics(timeout=10).topics
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
    assert set(admin.list_topics(timeout=10).topics) == CONTRACT_TOPICS
    assert all(registry.get_versions(s) == [1] for s in registry.get_subjects())


def test_prune_deletes_only_unknown_topics(own_stack: dict[str, str], unique: str) -> None:
    admin = AdminClient({"bootstrap.servers": own_stack["KAFKA_BROKERS"]})
    from confluent_kafka.admin import NewTopic

    admin.create_topics([NewTopic(f"stray-{unique}", 1, 1)])[f"stray-{unique}"].result()
    kept = cli(own_stack, "sync")
    assert f"stray-{unique}" in admin.list_topics(timeout=10).topics, kept.stdout
    pruned = cli(own_stack, "sync", "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert f"topic stray-{unique}: deleted" in pruned.stdout
    assert set(admin.list_topics(timeout=10).topics) == CONTRACT_TOPICS


def test_stack_up_twice_is_safe_and_status_reports_running(own_stack: dict[str, str]) -> None:
    again = cli(own_stack, "stack", "up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "broker: already running" in again.stdout
    assert "registry: already running" in again.stdout
    status = cli(own_stack, "stack", "status")
    assert status.returncode == 0
    assert status.stdout.count("answering") == 3


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


def test_a_taken_port_is_a_clear_error_and_down_stops_everything(services: Services, tmp_path: Path) -> None:
    if services.stack is None:
        pytest.skip("external services")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    config = StackConfig(tmp_path, broker_port=free_port(), registry_port=taken, registry_db="schema_registry_test")
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
