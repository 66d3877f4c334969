"""Configuration from environment variables.

Names and defaults follow the open-bank reference handlers where they exist
(``KAFKA_BROKERS``, ``SCHEMA_REGISTRY_URL``, ``KAFKA_*_TOPIC``, ``DB_*``).
Each variable is declared once: on the settings field it fills (``setting``),
with its default, meaning and how it is read; a topic's variable is declared
with the topic in ``schemas/topology.json``. ``--help`` prints the table of all
of them and ``load_settings`` validates all of them, reporting every problem at
once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from command_handler.topology import topic_specs


class ConfigError(ValueError):
    """One or more environment variables are invalid; the message lists them all."""


@dataclass(frozen=True)
class Var:
    name: str
    default: str
    help: str
    read: Callable[[_Reader, Var], Any]
    secret: bool = False
    group: str = "general"


class _Reader:
    """Reads variables from an environment and collects every problem."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []

    def raw(self, var: Var) -> str:
        return self.env.get(var.name, var.default).strip()


def _text(read: _Reader, var: Var) -> str:
    return read.raw(var)


def _nonempty(read: _Reader, var: Var) -> str:
    value = read.raw(var)
    if not value:
        read.errors.append(f"{var.name} must not be empty")
    return value


def _number(low: int, high: int) -> Callable[[_Reader, Var], int]:
    def number(read: _Reader, var: Var) -> int:
        raw = read.raw(var)
        try:
            value = int(raw)
        except ValueError:
            read.errors.append(f"{var.name}={raw!r} is not a whole number")
            return low
        if not low <= value <= high:
            read.errors.append(f"{var.name}={value} is out of range {low}..{high}")
        return value

    return number


def _choice(*choices: str, upper: bool = False) -> Callable[[_Reader, Var], str]:
    def choice(read: _Reader, var: Var) -> str:
        raw = read.raw(var)
        value = raw.upper() if upper else raw.lower()
        if value not in choices:
            read.errors.append(f"{var.name}={raw!r} must be one of {', '.join(choices)}")
        return value

    return choice


def _file(read: _Reader, var: Var) -> str:
    path = read.raw(var)
    if path and not Path(path).is_file():
        read.errors.append(f"{var.name}={path!r}: no such file")
    return path


def _pairs(read: _Reader, var: Var) -> dict[str, str]:
    result: dict[str, str] = {}
    parts = [p.strip() for p in read.raw(var).split(";") if p.strip()]
    for number, part in enumerate(parts, 1):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            # its text is not repeated: a malformed entry may hold a password
            read.errors.append(
                f"{var.name}: entry {number} of {len(parts)} is not 'key=value' (not shown: it may hold a secret)"
            )
            continue
        result[key.strip()] = value.strip()
    return result


def _boolean(read: _Reader, var: Var) -> bool:
    raw = read.raw(var).lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        read.errors.append(f"{var.name}={raw!r} must be true or false")
    return raw in ("true", "1", "yes")


def _url(read: _Reader, var: Var) -> str:
    value = _nonempty(read, var)
    for url in value.split(","):
        parsed = urlparse(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            # the URL is not repeated: it may hold user:password@
            read.errors.append(f"{var.name} must be http:// or https:// URLs, comma separated (value not shown)")
            break
    return value


def _user_password(read: _Reader, var: Var) -> str:
    value = read.raw(var)
    if value and ":" not in value:
        read.errors.append(f"{var.name} must be 'user:password'")
    return value


def setting(
    name: str,
    default: str,
    help: str,
    read: Callable[[_Reader, Var], Any] = _text,
    group: str = "general",
    secret: bool = False,
    shown: bool = True,
) -> Any:
    """A settings field filled from the environment variable ``name``; a secret one (or one that may hold
    credentials, ``shown=False``) stays out of the settings' repr."""
    return field(repr=shown and not secret, metadata={"var": Var(name, default, help, read, secret, group)})


# Client settings the guarantees rest on: the extras may not change them.
PRODUCER_FIXED = (
    "acks",
    "enable.idempotence",
    "max.in.flight.requests.per.connection",
    "transactional.id",
    "message.timeout.ms",
    "delivery.timeout.ms",
)
CONSUMER_FIXED = ("enable.auto.commit", "enable.auto.offset.store", "group.id", "isolation.level")
# The connection's security is set by the handler's own variables only: an extra can never weaken it.
SECURITY_FIXED = {
    "security.protocol": "KAFKA_SECURITY_PROTOCOL",
    "enable.ssl.certificate.verification": "(always on)",
    "ssl.endpoint.identification.algorithm": "KAFKA_SSL_VERIFY_HOSTNAME",
    "ssl.ca.location": "KAFKA_SSL_CA_LOCATION",
    "ssl.ca.pem": "KAFKA_SSL_CA_LOCATION",
    "ssl.cipher.suites": "(librdkafka's default)",
    "ssl.protocols": "(librdkafka's default)",
}


@dataclass(frozen=True)
class KafkaSettings:
    brokers: str = setting("KAFKA_BROKERS", "localhost:9092", "bootstrap servers, comma separated", _nonempty, "kafka")
    client_id: str = setting(
        "KAFKA_CLIENT_ID", "command-handler", "client id of the consumer and producer", _nonempty, "kafka"
    )
    group_id: str = setting("KAFKA_GROUP_ID", "command-handler", "consumer group of the handler", _nonempty, "kafka")
    linger_ms: int = setting(
        "KAFKA_LINGER_MS", "5", "producer linger.ms (the reference used 100)", _number(0, 60_000), "kafka"
    )
    session_timeout_ms: int = setting(
        "KAFKA_SESSION_TIMEOUT_MS",
        "45000",
        "consumer session.timeout.ms (the local Tansu broker joins in about half of it: use 6000 there)",
        _number(1_000, 3_600_000),
        "kafka",
    )
    fetch_wait_max_ms: int = setting(
        "KAFKA_FETCH_WAIT_MAX_MS",
        "500",
        "consumer fetch.wait.max.ms (Tansu answers a fetch only after it: use 10 there)",
        _number(0, 300_000),
        "kafka",
    )
    security_protocol: str = setting(
        "KAFKA_SECURITY_PROTOCOL", "", "PLAINTEXT or SSL; SSL is implied by KAFKA_SSL_CA_LOCATION", group="kafka"
    )
    ssl_ca_location: str = setting(
        "KAFKA_SSL_CA_LOCATION", "", "PEM file of the CA that signed the brokers' certificates", _file, "kafka"
    )
    ssl_certificate_location: str = setting(
        "KAFKA_SSL_CERTIFICATE_LOCATION", "", "PEM client certificate (mutual TLS)", _file, "kafka"
    )
    ssl_key_location: str = setting("KAFKA_SSL_KEY_LOCATION", "", "PEM client key (mutual TLS)", _file, "kafka")
    ssl_key_password: str = setting(
        "KAFKA_SSL_KEY_PASSWORD", "", "password of the client key", group="kafka", secret=True
    )
    ssl_keystore_location: str = setting(
        "SSL_KEYSTORE_LOCATION",
        "",
        "the reference's Java keystore (JKS or PKCS#12) with the client key and certificate",
        _file,
        "kafka",
    )
    ssl_truststore_location: str = setting(
        "SSL_TRUSTSTORE_LOCATION",
        "",
        "the reference's truststore (JKS or PKCS#12) with the brokers' CA",
        _file,
        "kafka",
    )
    ssl_password: str = setting(
        "SSL_PASSWORD", "", "the reference's one password of both stores and the key", group="kafka", secret=True
    )
    ssl_verify_hostname: bool = setting(
        "KAFKA_SSL_VERIFY_HOSTNAME",
        "true",
        "verify that the broker's certificate names the host connected to (the reference turns this off)",
        _boolean,
        "kafka",
    )
    transactions: bool = setting(
        "KAFKA_TRANSACTIONS",
        "false",
        "exactly-once outputs: each batch's outputs and consumed offsets in one Kafka transaction "
        "(readers use isolation.level=read_committed)",
        _boolean,
        "kafka",
    )
    consumer_extra: dict[str, str] = setting(
        "KAFKA_CONSUMER_EXTRA", "", "extra librdkafka consumer settings, 'key=value;key=value'", _pairs, "kafka"
    )
    producer_extra: dict[str, str] = setting(
        "KAFKA_PRODUCER_EXTRA", "", "extra librdkafka producer settings, 'key=value;key=value'", _pairs, "kafka"
    )

    # librdkafka settings read from the Java keystores (PEM in memory), filled by load_settings
    keystores: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def protocol(self) -> str:
        explicit = self.security_protocol.upper()
        implied = self.ssl_ca_location or self.ssl_certificate_location or self.ssl_keystore_location
        return explicit or ("SSL" if implied or self.ssl_truststore_location else "PLAINTEXT")

    @property
    def security(self) -> dict[str, str]:
        """The librdkafka settings of the connection's security."""
        conf = {"security.protocol": self.protocol.lower()}
        for option, value in (
            ("ssl.ca.location", self.ssl_ca_location),
            ("ssl.certificate.location", self.ssl_certificate_location),
            ("ssl.key.location", self.ssl_key_location),
            ("ssl.key.password", self.ssl_key_password),
        ):
            if value:
                conf[option] = value
        conf.update(self.keystores)
        if self.protocol == "SSL":
            conf["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_verify_hostname else "none"
        return conf

    def problems(self) -> list[str]:
        found = []
        if self.protocol not in ("PLAINTEXT", "SSL"):
            found.append(f"KAFKA_SECURITY_PROTOCOL={self.security_protocol!r} must be PLAINTEXT or SSL")
        if bool(self.ssl_certificate_location) != bool(self.ssl_key_location):
            found.append("KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together")
        if self.ssl_keystore_location and self.ssl_certificate_location:
            found.append("SSL_KEYSTORE_LOCATION and KAFKA_SSL_CERTIFICATE_LOCATION: give the client key one way")
        if self.ssl_truststore_location and self.ssl_ca_location:
            found.append("SSL_TRUSTSTORE_LOCATION and KAFKA_SSL_CA_LOCATION: give the CA one way")
        for name, extra, fixed in (
            ("KAFKA_PRODUCER_EXTRA", self.producer_extra, PRODUCER_FIXED),
            ("KAFKA_CONSUMER_EXTRA", self.consumer_extra, CONSUMER_FIXED),
        ):
            overridden = sorted(set(extra) & set(fixed))
            if overridden:
                found.append(
                    f"{name} may not set {', '.join(overridden)}: the handler's delivery guarantees rest on them"
                )
            for option in sorted(set(extra) & set(SECURITY_FIXED)):
                found.append(
                    f"{name} may not set {option}: the connection's security is set by {SECURITY_FIXED[option]} only"
                )
        strategy = self.consumer_extra.get("partition.assignment.strategy", "")
        if "cooperative" in strategy.lower():
            found.append(
                "KAFKA_CONSUMER_EXTRA: partition.assignment.strategy=cooperative-sticky is not supported "
                "(the handler uses eager rebalancing: range or roundrobin)"
            )
        return found

    def read_keystores(self) -> tuple[KafkaSettings, list[str]]:
        """These settings with the Java keystores read (see ``keystores``), and the problems found."""
        from command_handler.keystores import KeystoreError, keystore_conf, truststore_conf

        conf: dict[str, str] = {}
        try:
            if self.ssl_keystore_location:
                conf |= keystore_conf(self.ssl_keystore_location, self.ssl_password)
            if self.ssl_truststore_location:
                conf |= truststore_conf(self.ssl_truststore_location, self.ssl_password)
        except (KeystoreError, OSError) as err:
            return self, [str(err)]
        return replace(self, keystores=conf), []

    def common(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.brokers, "client.id": self.client_id, **self.security}


@dataclass(frozen=True)
class Topics:
    """The topic names, by role; each role's variable, default and meaning are in ``schemas/topology.json``."""

    commands: str
    account_creation_feedback: str
    money_transfer_feedback: str
    balance_changed: str
    dead_letter: str

    def by_env(self) -> dict[str, str]:
        """Variable name -> topic name, as ``load_topology`` takes them."""
        return {spec.env: getattr(self, spec.role) for spec in topic_specs()}

    def problems(self) -> list[str]:
        names = list(self.by_env().values())
        return [] if len(set(names)) == len(names) else [f"topic names must differ, got {names}"]


REGISTRY_TIMEOUT_S = 5


def _without_userinfo(url: str) -> str:
    parsed = urlparse(url.strip())
    if parsed.username is None and parsed.password is None:
        return url.strip()
    return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()


@dataclass(frozen=True)
class RegistrySettings:
    url: str = setting(
        "SCHEMA_REGISTRY_URL",
        "http://localhost:8081",
        "Schema Registry URL (http or https)",
        _url,
        "registry",
        shown=False,  # it may hold user:password@; display() is what logs show
    )
    basic_auth: str = setting(
        "SCHEMA_REGISTRY_BASIC_AUTH",
        "",
        "basic auth for the registry, 'user:password'",
        _user_password,
        "registry",
        secret=True,
    )
    ca_location: str = setting(
        "SCHEMA_REGISTRY_CA_LOCATION", "", "PEM CA file to verify an https registry", _file, "registry"
    )

    unknown_schema_grace_s: int = setting(
        "SCHEMA_UNKNOWN_GRACE_S",
        "5",
        "how long a command whose schema id the registry does not know (yet: a lagging or restored "
        "registry) is retried, holding only its own partition, before it is dead-lettered",
        _number(0, 3600),
        "registry",
    )

    def display(self) -> str:
        """The URL for log lines: without a user and password written into it."""
        return ",".join(_without_userinfo(u) for u in self.url.split(","))

    def client_conf(self) -> dict[str, Any]:
        # a registry that accepts a connection and never answers must not hang the handler
        # and no retries inside the client: the loop retries, polling its group and looking at SIGTERM
        conf: dict[str, Any] = {"url": self.url, "timeout": REGISTRY_TIMEOUT_S, "max.retries": 0}
        if self.basic_auth:
            conf["basic.auth.user.info"] = self.basic_auth
        if self.ca_location:
            conf["ssl.ca.location"] = self.ca_location
        return conf


_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class DatabaseSettings:
    host: str = setting("DB_HOSTNAME", "localhost", "Postgres host", _nonempty, "database")
    port: int = setting("DB_PORT", "5432", "Postgres port", _number(1, 65535), "database")
    name: str = setting("DB_NAME", "balancedb", "database of the balances", _nonempty, "database")
    user: str = setting("DB_USER", "clojure_ch", "database role of the handler", _nonempty, "database")
    password: str = setting("DB_PASSWORD", "kafka-graphql-pw", "password of DB_USER", group="database", secret=True)
    sslmode: str = setting(
        "DB_SSLMODE",
        "require",
        "libpq sslmode (disable, allow, prefer, require, verify-ca, verify-full); set disable for a server without TLS",
        _choice(*_SSL_MODES),
        "database",
    )
    sslrootcert: str = setting(
        "DB_SSLROOTCERT", "", "PEM root certificate for verify-ca / verify-full", _file, "database"
    )
    statement_timeout_ms: int = setting(
        "DB_STATEMENT_TIMEOUT_MS",
        "30000",
        "longest a statement of the handler may run before it is cancelled and retried later",
        _number(100, 3_600_000),
        "database",
    )
    lock_timeout_ms: int = setting(
        "DB_LOCK_TIMEOUT_MS",
        "10000",
        "longest the handler waits for a row lock before its batch is retried later",
        _number(100, 3_600_000),
        "database",
    )
    admin_url: str = setting(
        "DB_ADMIN_URL",
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "superuser URL used only by 'migrate --create-db' and the local stack",
        group="database",
        secret=True,
    )

    def url(self, database: str | None = None) -> str:
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        query = f"sslmode={self.sslmode}"
        if self.sslrootcert:
            query += f"&sslrootcert={quote(self.sslrootcert)}"
        return f"postgresql+psycopg://{auth}@{self.host}:{self.port}/{database or self.name}?{query}"

    def display(self) -> str:
        """Where the database is, for log lines: never the password."""
        return f"{self.user}@{self.host}:{self.port}/{self.name} (sslmode={self.sslmode})"


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    topics: Topics
    registry: RegistrySettings
    database: DatabaseSettings
    log_level: str = setting(
        "LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR", _choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True)
    )
    log_format: str = setting(
        "LOG_FORMAT", "text", "text, or json for one JSON object per line", _choice("text", "json")
    )
    startup_timeout_s: int = setting(
        "STARTUP_TIMEOUT_S", "60", "how long to wait for the broker, registry and database at start", _number(1, 3600)
    )
    batch_size: int = setting(
        "HANDLER_BATCH_SIZE", "500", "most commands handled in one database transaction", _number(1, 10_000), "handler"
    )
    health_host: str = setting(
        "HEALTH_HOST",
        "127.0.0.1",
        "address the health endpoint listens on (the image sets 0.0.0.0 for the platform's probes)",
        _nonempty,
        "handler",
    )
    health_port: int = setting(
        "HEALTH_PORT",
        "0",
        "port of the HTTP health endpoint (/health/live, /health/ready); 0 turns it off",
        _number(0, 65535),
        "handler",
    )
    stats_interval_s: int = setting(
        "STATS_INTERVAL_S",
        "30",
        "seconds between two statistics log lines; 0 turns them off",
        _number(0, 86_400),
        "handler",
    )


def _declared(cls: type) -> list[tuple[str, Var]]:
    return [(f.name, f.metadata["var"]) for f in fields(cls) if "var" in f.metadata]


def _topic_variables() -> list[tuple[str, Var]]:
    return [(spec.role, Var(spec.env, spec.name, spec.about, _nonempty, group="kafka")) for spec in topic_specs()]


def variables() -> list[Var]:
    """Every variable, in the order of ``--help``."""
    found = [var for _, var in _declared(KafkaSettings)]
    found[3:3] = [var for _, var in _topic_variables()]  # topics after brokers, client and group id
    for cls in (RegistrySettings, DatabaseSettings, Settings):
        found += [var for _, var in _declared(cls)]
    return found


def describe_variables(groups: tuple[str, ...] | None = None) -> str:
    """The table printed by ``--help``: name, default and meaning of each variable."""
    lines = []
    for var in variables():
        if groups is not None and var.group not in groups:
            continue
        default = "(secret)" if var.secret and var.default else (var.default or "(empty)")
        lines.append(f"  {var.name:<32} {var.help} [default: {default}]")
    return "\n".join(lines)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every variable; raise ConfigError listing all problems."""
    read = _Reader(os.environ if env is None else env)

    def values(declared: list[tuple[str, Var]]) -> dict[str, Any]:
        return {name: var.read(read, var) for name, var in declared}

    kafka = KafkaSettings(**values(_declared(KafkaSettings)))
    if not read.errors:
        kafka, problems = kafka.read_keystores()
        read.errors += problems
    topics = Topics(**values(_topic_variables()))
    settings = Settings(
        kafka=kafka,
        topics=topics,
        registry=RegistrySettings(**values(_declared(RegistrySettings))),
        database=DatabaseSettings(**values(_declared(DatabaseSettings))),
        **values(_declared(Settings)),
    )
    read.errors += kafka.problems() + topics.problems()
    if read.errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(read.errors))
    return settings
