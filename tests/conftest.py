"""Shared fixtures: the services the integration tests talk to.

By default the session starts its own local stack in a temporary STACK_DIR on
free ports: Apache Kafka (``TEST_BROKER=tansu`` for Tansu) with a mutual-TLS
listener whose CA and certificates the session makes, Apicurio Registry (the
Schema Registry, Confluent's API), and a PostgreSQL cluster of its own; it stops
all of it at the end.
To run the same suite against external services, set any of:

* ``TEST_POSTGRES=external``: use the PostgreSQL server of ``DB_HOSTNAME``,
  ``DB_PORT``, ``DB_USER``, ``DB_PASSWORD``, ``DB_ADMIN_URL``
* ``TEST_KAFKA_BROKERS`` and ``TEST_SCHEMA_REGISTRY_URL``: use this Kafka and
  Schema Registry, and start no stack (implies ``TEST_POSTGRES=external``)

The tests always use their own databases (``TEST_DB_NAME``, default
``balancedb_test``), dropped and created afresh, never the real ``DB_NAME``.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from command_handler.adapters import migrations
from command_handler.adapters.database import drop_database, ensure_role_and_database
from command_handler.config import Settings, load_settings
from open_bank_devtools.health import free_port
from open_bank_devtools.stack.local_stack import LocalStack, StackConfig

from .certificates import make_certificates

TEST_DB = os.environ.get("TEST_DB_NAME", "balancedb_test")
TEST_REGISTRY_DB = "schema_registry_test"
TEST_BROKER = os.environ.get("TEST_BROKER", "kafka")


@dataclass
class Services:
    env: dict[str, str]
    stack: LocalStack | None

    def settings(self, **overrides: str) -> Settings:
        return load_settings({**self.env, **overrides})


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith("DB_") and k != "DB_NAME"}
    env.update(
        DB_NAME=TEST_DB,
        LOG_LEVEL="INFO",
        STARTUP_TIMEOUT_S="60",
        # handlers that the tests kill must leave their group quickly (a test setting, not the stack's)
        KAFKA_SESSION_TIMEOUT_MS="6000",
    )
    return env


def stack_config_on_free_ports(directory: Path, broker: str = TEST_BROKER, own_postgres: bool = True) -> StackConfig:
    """A stack on free ports in ``directory``; with Kafka, a mutual-TLS listener with fresh certificates."""
    return StackConfig(
        directory=directory,
        broker=broker,
        broker_port=free_port(),
        controller_port=free_port(),
        registry_port=free_port(),
        registry_health_port=free_port(),
        db_port=free_port(),
        registry_db=TEST_REGISTRY_DB,
        own_postgres=own_postgres,
        tls_dir=make_certificates(directory / "tls") if broker == "kafka" else None,
        broker_tls_port=free_port(),
    )


STACK_ROOT = Path(tempfile.mkdtemp(prefix="open-bank-tests-"))


def stack_directory(name: str) -> Path:
    """A folder for a stack of the tests, outside pytest's own temporary root: pytest takes group and
    other permissions off that root at the start of every session (any other pytest run of the same
    user too), which would lock the stack's PostgreSQL, running as its own user, out of its files."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=STACK_ROOT))


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    env = _base_env()
    external_kafka = os.environ.get("TEST_KAFKA_BROKERS")
    external_registry = os.environ.get("TEST_SCHEMA_REGISTRY_URL")
    stack = None
    if external_kafka and external_registry:
        env.update(KAFKA_BROKERS=external_kafka, SCHEMA_REGISTRY_URL=external_registry)
    else:
        own_postgres = os.environ.get("TEST_POSTGRES", "own") != "external"
        config = stack_config_on_free_ports(stack_directory("stack"), own_postgres=own_postgres)
        stack = LocalStack(config, load_settings(env), out=lambda line: print(f"[stack] {line}"))
        if not own_postgres:
            drop_database(stack.database.admin_url, TEST_REGISTRY_DB)
        stack.up(timeout_s=120)
        env.update(stack.environment())
    db = load_settings(env).database
    migrations.fresh_database(db)
    try:
        yield Services(env, stack)
    finally:
        if stack is not None:
            stack.down()
        leftovers = processes_under(Path(tmp_path_factory.getbasetemp())) | processes_under(STACK_ROOT)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(STACK_ROOT, ignore_errors=True)
        assert not leftovers, f"processes started by the tests outlived them: {leftovers}"


def processes_under(directory: Path) -> dict[int, str]:
    """Live processes whose working directory is inside ``directory`` (zombies have none): pid -> command."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline and cwd.startswith(str(directory)):
            found[int(proc.name)] = cmdline[:200]
    return found


@pytest.fixture
def unique() -> str:
    """A short unique suffix for names (topics, subjects, databases) a test makes for itself."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def scratch_db(services: Services, unique: str) -> Iterator[Settings]:
    """Settings pointing at an empty database of its own, dropped afterwards."""
    settings = services.settings()
    name = f"scratch_{unique}"
    db = replace(settings.database, name=name)
    ensure_role_and_database(db.admin_url, db.user, db.password, name)
    try:
        yield replace(settings, database=db)
    finally:
        drop_database(db.admin_url, name)
