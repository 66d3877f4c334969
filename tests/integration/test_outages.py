"""What may heal is waited for, never dead-lettered: a read-only database (a standby after a failover)
and a row lock held past the lock timeout. And what the handler logs at DEBUG holds no token."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from command_handler.domain.iban import BANK_IBAN
from open_bank_devtools.loadtest.bank_client import BankClient

from ..conftest import Services
from .handler_process import HandlerProcess, World, isolated_world

pytestmark = pytest.mark.integration


@pytest.fixture
def world(services: Services) -> Iterator[World]:
    with isolated_world(services.env, "outage" + uuid4().hex[:8]) as w:
        yield w


def readiness(port: int) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(0.1)


def db_retries(port: int) -> float:
    """The handler's ``open_bank_db_retries_total{kind="unavailable"}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('open_bank_db_retries_total{kind="unavailable"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def dead_letter_count(world: World) -> int:
    settings = world.settings
    consumer = Consumer({"bootstrap.servers": settings.kafka.brokers, "group.id": f"count-{uuid4()}"})
    try:
        topic = settings.topics.dead_letter
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


def cut_connections(admin: psycopg.Connection, database: str) -> None:
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
        (database, "command-handler"),
    )


def test_a_read_only_database_longer_than_the_poll_interval_is_waited_for_in_the_group(
    world: World, tmp_path: Path
) -> None:
    """Read-only for longer than max.poll.interval.ms (8 s here): the handler stays in its group (it
    pauses its partitions and polls), reports not-ready, and answers every command once it can write."""
    handler = HandlerProcess(
        world, tmp_path, KAFKA_SESSION_TIMEOUT_MS="6000", KAFKA_CONSUMER_EXTRA="max.poll.interval.ms=8000"
    ).wait_ready()
    client = BankClient(world.settings)
    database = world.settings.database.name
    try:
        with psycopg.connect(world.settings.database.admin_url, autocommit=True) as admin:
            opened = client.wait_for(client.open_account("ro-user")).value
            # the database turns read-only, as a standby does after a failover
            admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
            cut_connections(admin, database)
            sent = [client.transfer("ro-user", "", 100, "cash", opened["iban"], f"d{n}") for n in range(30)]
            client.flush()
            eventually(lambda: readiness(handler.health_port)[0] == 503, "the handler reports not-ready")
            _, report = readiness(handler.health_port)
            assert "database" in report["state"], report
            assert not any(client.feedback.get(i) for i in sent)  # nothing answered, nothing lost yet
            # the outage outlasts max.poll.interval.ms: 8 retries of the backoff (0.1 s doubling to 5 s) are 16 s
            eventually(lambda: db_retries(handler.health_port) >= 8, "eight retries of the database", 90)
            assert not any(client.feedback.get(i) for i in sent)
            admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
            cut_connections(admin, database)
        answers = client.wait_all(sent, 90)
        assert {a.record for a in answers.values()} == {"MoneyTransferConfirmed"}
        eventually(lambda: readiness(handler.health_port)[0] == 200, "ready again")
        during = handler.output()
        assert "revoked" not in during and "lost" not in during and "max.poll" not in during, during[-3000:]
    finally:
        client.close()
        assert handler.terminate() == 0
    assert dead_letter_count(world) == 0
    assert "refused by the database" not in handler.output()


def test_a_lock_held_past_the_lock_timeout_delays_the_transfer_but_it_is_answered(world: World, tmp_path: Path) -> None:
    handler = HandlerProcess(world, tmp_path, DB_LOCK_TIMEOUT_MS="300").wait_ready()
    client = BankClient(world.settings)
    try:
        with psycopg.connect(
            world.settings.database.admin_url.rsplit("/", 1)[0] + "/" + world.settings.database.name
        ) as locker:
            locker.execute("SELECT amount FROM balance WHERE iban = %s FOR UPDATE", (BANK_IBAN,))
            deposit = client.transfer("lock-user", "", 500, "cash", BANK_IBAN, "behind a lock")
            client.flush()
            retries = 'open_bank_db_retries_total{kind="unavailable"}'
            eventually(lambda: metric(handler.health_port, retries) >= 2, "the handler retried after lock timeouts")
            assert not client.feedback.get(deposit)
            locker.rollback()
        assert client.wait_for(deposit, 60).record == "MoneyTransferConfirmed"
    finally:
        client.close()
        assert handler.terminate() == 0
    assert dead_letter_count(world) == 0


def metric(port: int, sample: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    return 0.0


def test_debug_logs_hold_no_token(world: World, tmp_path: Path) -> None:
    handler = HandlerProcess(world, tmp_path, LOG_LEVEL="DEBUG").wait_ready()
    client = BankClient(world.settings)
    try:
        opened = client.wait_for(client.open_account("debug-user")).value
        paid = client.transfer("debug-user", opened["token"], 1, opened["iban"], BANK_IBAN, "debug")
        client.wait_for(paid)
    finally:
        client.close()
        assert handler.terminate() == 0
    output = handler.output()
    assert "ConfirmAccountCreation" in output and "DEBUG" in output  # it did log the commands
    assert opened["token"] not in output
