"""Configuration from environment variables.

Names and defaults follow the open-bank reference handlers where they exist
(``KAFKA_BROKERS``, ``SCHEMA_REGISTRY_URL``, ``KAFKA_*_TOPIC``, ``DB_*``), so
the defaults reach the local stack started by ``command-handler stack up``.
Every variable is declared once in ``VARIABLES``; ``--help`` prints that table
and ``load_settings`` validates all of them, reporting every problem at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse


class ConfigError(ValueError):
    """One or more environment variables are invalid; the message lists them all."""


@dataclass(frozen=True)
class Var:
    name: str
    default: str | None
    help: str
    secret: bool = False
    group: str = "general"


VARIABLES: tuple[Var, ...] = (
    # Kafka
    Var("KAFKA_BROKERS", "localhost:9092", "bootstrap servers, comma separated", group="kafka"),
    Var("KAFKA_CLIENT_ID", "command-handler", "client id of the consumer and producer", group="kafka"),
    Var("KAFKA_GROUP_ID", "command-handler", "consumer group of the handler", group="kafka"),
    Var("KAFKA_COMMAND_TOPIC", "commands", "topic the commands arrive on", group="kafka"),
    Var("KAFKA_ACF_TOPIC", "account_creation_feedback", "answers to ConfirmAccountCreation", group="kafka"),
    Var("KAFKA_MTF_TOPIC", "money_transfer_feedback", "answers to ConfirmMoneyTransfer", group="kafka"),
    Var("KAFKA_BC_TOPIC", "balance_changed", "BalanceChanged events", group="kafka"),
    Var(
        "KAFKA_DLQ_TOPIC",
        "commands.dlq",
        "dead-letter topic for commands that cannot be decoded",
        group="kafka",
    ),
    Var("KAFKA_LINGER_MS", "5", "producer linger.ms (the reference used 100)", group="kafka"),
    Var(
        "KAFKA_SESSION_TIMEOUT_MS",
        "45000",
        "consumer session.timeout.ms (the local Tansu broker joins in about half of it: use 6000 there)",
        group="kafka",
    ),
    Var(
        "KAFKA_FETCH_WAIT_MAX_MS",
        "500",
        "consumer fetch.wait.max.ms (Tansu answers a fetch only after it: use 10 there)",
        group="kafka",
    ),
    Var(
        "KAFKA_SECURITY_PROTOCOL",
        "",
        "PLAINTEXT or SSL; SSL is implied by KAFKA_SSL_CA_LOCATION",
        group="kafka",
    ),
    Var("KAFKA_SSL_CA_LOCATION", "", "PEM file of the CA that signed the brokers' certificates", group="kafka"),
    Var("KAFKA_SSL_CERTIFICATE_LOCATION", "", "PEM client certificate (mutual TLS)", group="kafka"),
    Var("KAFKA_SSL_KEY_LOCATION", "", "PEM client key (mutual TLS)", group="kafka"),
    Var("KAFKA_SSL_KEY_PASSWORD", "", "password of the client key", secret=True, group="kafka"),
    Var(
        "KAFKA_CONSUMER_EXTRA",
        "",
        "extra librdkafka consumer settings, 'key=value;key=value'",
        group="kafka",
    ),
    Var(
        "KAFKA_PRODUCER_EXTRA",
        "",
        "extra librdkafka producer settings, 'key=value;key=value'",
        group="kafka",
    ),
    # Schema Registry
    Var(
        "SCHEMA_REGISTRY_URL",
        "http://localhost:8081",
        "Schema Registry URL (http or https)",
        group="registry",
    ),
    Var(
        "SCHEMA_REGISTRY_BASIC_AUTH",
        "",
        "basic auth for the registry, 'user:password'",
        secret=True,
        group="registry",
    ),
    Var("SCHEMA_REGISTRY_CA_LOCATION", "", "PEM CA file to verify an https registry", group="registry"),
    # Postgres
    Var("DB_HOSTNAME", "localhost", "Postgres host", group="database"),
    Var("DB_PORT", "5432", "Postgres port", group="database"),
    Var("DB_NAME", "balancedb", "database of the balances", group="database"),
    Var("DB_USER", "clojure_ch", "database role of the handler", group="database"),
    Var("DB_PASSWORD", "kafka-graphql-pw", "password of DB_USER", secret=True, group="database"),
    Var(
        "DB_SSLMODE",
        "prefer",
        "libpq sslmode (disable, prefer, require, verify-ca, verify-full)",
        group="database",
    ),
    Var("DB_SSLROOTCERT", "", "PEM root certificate for verify-ca / verify-full", group="database"),
    Var(
        "DB_ADMIN_URL",
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "superuser URL used only by 'migrate --create-db' and the local stack",
        secret=True,
        group="database",
    ),
    # General
    Var("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Var("HANDLER_BATCH_SIZE", "500", "most commands handled in one database transaction", group="handler"),
    Var(
        "HEALTH_PORT",
        "0",
        "port of the HTTP health endpoint (/health/live, /health/ready); 0 turns it off",
        group="handler",
    ),
    Var("STATS_INTERVAL_S", "30", "seconds between two statistics log lines; 0 turns them off", group="handler"),
    Var("STARTUP_TIMEOUT_S", "60", "how long to wait for the broker, registry and database at start"),
)

_BY_NAME = {v.name: v for v in VARIABLES}
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def describe_variables(groups: tuple[str, ...] | None = None) -> str:
    """The table printed by ``--help``: name, default and meaning of each variable."""
    lines = []
    for var in VARIABLES:
        if groups is not None and var.group not in groups:
            continue
        default = "(secret)" if var.secret and var.default else (var.default or "(empty)")
        lines.append(f"  {var.name:<32} {var.help} [default: {default}]")
    return "\n".join(lines)


class _Reader:
    """Reads variables from an environment and collects every problem."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []

    def text(self, name: str) -> str:
        default = _BY_NAME[name].default or ""
        return self.env.get(name, default).strip()

    def number(self, name: str, low: int, high: int) -> int:
        raw = self.text(name)
        try:
            value = int(raw)
        except ValueError:
            self.errors.append(f"{name}={raw!r} is not a whole number")
            return low
        if not low <= value <= high:
            self.errors.append(f"{name}={value} is out of range {low}..{high}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], upper: bool = False) -> str:
        raw = self.text(name)
        value = raw.upper() if upper else raw.lower()
        if value not in choices:
            self.errors.append(f"{name}={raw!r} must be one of {', '.join(choices)}")
        return value

    def file(self, name: str) -> str:
        path = self.text(name)
        if path and not Path(path).is_file():
            self.errors.append(f"{name}={path!r}: no such file")
        return path

    def nonempty(self, name: str) -> str:
        value = self.text(name)
        if not value:
            self.errors.append(f"{name} must not be empty")
        return value

    def pairs(self, name: str) -> dict[str, str]:
        raw = self.text(name)
        result: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in raw.split(";"))):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                self.errors.append(f"{name}: {part!r} is not 'key=value'")
                continue
            result[key.strip()] = value.strip()
        return result


@dataclass(frozen=True)
class Topics:
    commands: str
    account_creation_feedback: str
    money_transfer_feedback: str
    balance_changed: str
    dead_letter: str

    def by_env(self) -> dict[str, str]:
        return {
            "KAFKA_COMMAND_TOPIC": self.commands,
            "KAFKA_ACF_TOPIC": self.account_creation_feedback,
            "KAFKA_MTF_TOPIC": self.money_transfer_feedback,
            "KAFKA_BC_TOPIC": self.balance_changed,
            "KAFKA_DLQ_TOPIC": self.dead_letter,
        }


@dataclass(frozen=True)
class KafkaSettings:
    brokers: str
    client_id: str
    group_id: str
    linger_ms: int
    session_timeout_ms: int
    fetch_wait_max_ms: int
    security: dict[str, str] = field(repr=False)
    consumer_extra: dict[str, str] = field(repr=False)
    producer_extra: dict[str, str] = field(repr=False)

    def common(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.brokers, "client.id": self.client_id, **self.security}


@dataclass(frozen=True)
class RegistrySettings:
    url: str
    basic_auth: str = field(repr=False)
    ca_location: str

    def client_conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"url": self.url}
        if self.basic_auth:
            conf["basic.auth.user.info"] = self.basic_auth
        if self.ca_location:
            conf["ssl.ca.location"] = self.ca_location
        return conf


@dataclass(frozen=True)
class DatabaseSettings:
    host: str
    port: int
    name: str
    user: str
    password: str = field(repr=False)
    sslmode: str
    sslrootcert: str
    admin_url: str = field(repr=False)

    def url(self, driver: str = "postgresql+psycopg", database: str | None = None) -> str:
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        query = f"sslmode={self.sslmode}"
        if self.sslrootcert:
            query += f"&sslrootcert={quote(self.sslrootcert)}"
        return f"{driver}://{auth}@{self.host}:{self.port}/{database or self.name}?{query}"

    def display(self) -> str:
        """Where the database is, for log lines: never the password."""
        return f"{self.user}@{self.host}:{self.port}/{self.name} (sslmode={self.sslmode})"


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    topics: Topics
    registry: RegistrySettings
    database: DatabaseSettings
    log_level: str
    startup_timeout_s: int
    batch_size: int
    health_port: int
    stats_interval_s: int


def _kafka_security(read: _Reader) -> dict[str, str]:
    ca = read.file("KAFKA_SSL_CA_LOCATION")
    cert = read.file("KAFKA_SSL_CERTIFICATE_LOCATION")
    key = read.file("KAFKA_SSL_KEY_LOCATION")
    key_password = read.text("KAFKA_SSL_KEY_PASSWORD")
    protocol = read.text("KAFKA_SECURITY_PROTOCOL").upper() or ("SSL" if ca or cert else "PLAINTEXT")
    if protocol not in ("PLAINTEXT", "SSL"):
        read.errors.append(f"KAFKA_SECURITY_PROTOCOL={protocol!r} must be PLAINTEXT or SSL")
    if bool(cert) != bool(key):
        read.errors.append("KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together")
    conf = {"security.protocol": protocol.lower()}
    for option, value in (
        ("ssl.ca.location", ca),
        ("ssl.certificate.location", cert),
        ("ssl.key.location", key),
        ("ssl.key.password", key_password),
    ):
        if value:
            conf[option] = value
    return conf


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every variable; raise ConfigError listing all problems."""
    read = _Reader(os.environ if env is None else env)
    topics = Topics(
        commands=read.nonempty("KAFKA_COMMAND_TOPIC"),
        account_creation_feedback=read.nonempty("KAFKA_ACF_TOPIC"),
        money_transfer_feedback=read.nonempty("KAFKA_MTF_TOPIC"),
        balance_changed=read.nonempty("KAFKA_BC_TOPIC"),
        dead_letter=read.nonempty("KAFKA_DLQ_TOPIC"),
    )
    names = list(topics.by_env().values())
    if len(set(names)) != len(names):
        read.errors.append(f"topic names must differ, got {names}")
    kafka = KafkaSettings(
        brokers=read.nonempty("KAFKA_BROKERS"),
        client_id=read.nonempty("KAFKA_CLIENT_ID"),
        group_id=read.nonempty("KAFKA_GROUP_ID"),
        linger_ms=read.number("KAFKA_LINGER_MS", 0, 60_000),
        session_timeout_ms=read.number("KAFKA_SESSION_TIMEOUT_MS", 1_000, 3_600_000),
        fetch_wait_max_ms=read.number("KAFKA_FETCH_WAIT_MAX_MS", 0, 300_000),
        security=_kafka_security(read),
        consumer_extra=read.pairs("KAFKA_CONSUMER_EXTRA"),
        producer_extra=read.pairs("KAFKA_PRODUCER_EXTRA"),
    )
    registry_url = read.nonempty("SCHEMA_REGISTRY_URL")
    parsed = urlparse(registry_url.split(",")[0])
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        read.errors.append(f"SCHEMA_REGISTRY_URL={registry_url!r} must be an http:// or https:// URL")
    basic_auth = read.text("SCHEMA_REGISTRY_BASIC_AUTH")
    if basic_auth and ":" not in basic_auth:
        read.errors.append("SCHEMA_REGISTRY_BASIC_AUTH must be 'user:password'")
    registry = RegistrySettings(
        url=registry_url, basic_auth=basic_auth, ca_location=read.file("SCHEMA_REGISTRY_CA_LOCATION")
    )
    database = DatabaseSettings(
        host=read.nonempty("DB_HOSTNAME"),
        port=read.number("DB_PORT", 1, 65535),
        name=read.nonempty("DB_NAME"),
        user=read.nonempty("DB_USER"),
        password=read.text("DB_PASSWORD"),
        sslmode=read.choice("DB_SSLMODE", _SSL_MODES),
        sslrootcert=read.file("DB_SSLROOTCERT"),
        admin_url=read.text("DB_ADMIN_URL"),
    )
    settings = Settings(
        kafka=kafka,
        topics=topics,
        registry=registry,
        database=database,
        log_level=read.choice("LOG_LEVEL", _LOG_LEVELS, upper=True),
        startup_timeout_s=read.number("STARTUP_TIMEOUT_S", 1, 3600),
        batch_size=read.number("HANDLER_BATCH_SIZE", 1, 10_000),
        health_port=read.number("HEALTH_PORT", 0, 65535),
        stats_interval_s=read.number("STATS_INTERVAL_S", 0, 86_400),
    )
    if read.errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(read.errors))
    return settings
