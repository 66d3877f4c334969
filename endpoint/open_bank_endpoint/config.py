"""The endpoint's configuration: the handler's Kafka, topic and registry variables, and its own.

Kafka (``KAFKA_BROKERS``, the SSL variables, ``KAFKA_LINGER_MS``), the topics (``KAFKA_*_TOPIC``), the
registry (``SCHEMA_REGISTRY_*``) and the database server (``DB_HOSTNAME``, ``DB_PORT``, ``DB_PASSWORD``,
``DB_SSLMODE``) are read as the handler reads them. The endpoint's own database and client names are
its own variables, with the reference endpoint's values as defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from command_handler.config import DatabaseSettings, Settings, load_settings
from open_bank_endpoint.errors import EndpointConfigError
from open_bank_endpoint.passwords import DEFAULT_ITERATIONS

# variable -> (default, meaning), for --help
VARIABLES = {
    "ENDPOINT_HOST": ("127.0.0.1", "address the endpoint listens on"),
    "ENDPOINT_PORT": ("8888", "port of HTTP /graphql, WebSocket /graphql-ws, the page and /health"),
    "ENDPOINT_DB_NAME": ("transactiondb", "the endpoint's database (transaction and account tables)"),
    "ENDPOINT_DB_USER": ("clojure_ge", "its role (password: DB_PASSWORD)"),
    "ENDPOINT_CLIENT_ID": ("graphql-endpoint", "Kafka client id of its producer and consumer"),
    "ENDPOINT_GROUP_ID": ("graphql-endpoint", "consumer group of its feedback and balance_changed consumer"),
    "ENDPOINT_LINGER_MS": ("0", "linger.ms of its producer of commands (a person waits for each one)"),
    "ENDPOINT_ANSWER_TIMEOUT_S": ("30", "how long get_account and money_transfer wait for the handler's answer"),
    "ENDPOINT_PBKDF2_ITERATIONS": (str(DEFAULT_ITERATIONS), "PBKDF2-HMAC-SHA256 iterations of new passwords"),
    "ENDPOINT_ALLOWED_ORIGINS": (
        "",
        "more browser origins allowed besides the endpoint's own and the reference frontend's, comma separated",
    ),
    "ENDPOINT_KEEPALIVE_S": ("10", "seconds between two 'ka' keep-alive messages on a WebSocket; 0: none"),
}

# where the reference frontend ran (its endpoint allowed these)
REFERENCE_ORIGINS = ("http://localhost:4200", "http://localhost:8181", "http://localhost:3449")


@dataclass(frozen=True)
class EndpointSettings:
    handler: Settings  # Kafka, topics, registry as the handler reads them
    database: DatabaseSettings
    host: str
    port: int
    client_id: str
    group_id: str
    answer_timeout_s: float
    pbkdf2_iterations: int
    allowed_origins: tuple[str, ...]
    keepalive_s: float
    linger_ms: int


def _number(env: Mapping[str, str], name: str, low: int, high: int, errors: list[str]) -> int:
    raw = env.get(name, VARIABLES[name][0]).strip()
    if not raw.isdigit() or not low <= int(raw) <= high:
        errors.append(f"{name}={raw!r} must be a whole number in {low}..{high}")
        return low
    return int(raw)


def load_endpoint_settings(env: Mapping[str, str] | None = None) -> EndpointSettings:
    env = dict(os.environ if env is None else env)
    handler = load_settings(env)
    errors: list[str] = []
    value = {name: env.get(name, default).strip() for name, (default, _) in VARIABLES.items()}
    port = _number(env, "ENDPOINT_PORT", 1, 65535, errors)
    timeout = _number(env, "ENDPOINT_ANSWER_TIMEOUT_S", 1, 3600, errors)
    iterations = _number(env, "ENDPOINT_PBKDF2_ITERATIONS", 1000, 10_000_000, errors)
    keepalive = _number(env, "ENDPOINT_KEEPALIVE_S", 0, 3600, errors)
    linger = _number(env, "ENDPOINT_LINGER_MS", 0, 60_000, errors)
    for name in ("ENDPOINT_HOST", "ENDPOINT_DB_NAME", "ENDPOINT_DB_USER", "ENDPOINT_CLIENT_ID", "ENDPOINT_GROUP_ID"):
        if not value[name]:
            errors.append(f"{name} must not be empty")
    if errors:
        raise EndpointConfigError("invalid configuration: " + "; ".join(errors))
    extra = tuple(o.strip().rstrip("/") for o in value["ENDPOINT_ALLOWED_ORIGINS"].split(",") if o.strip())
    return EndpointSettings(
        handler=handler,
        database=replace(handler.database, name=value["ENDPOINT_DB_NAME"], user=value["ENDPOINT_DB_USER"]),
        host=value["ENDPOINT_HOST"],
        port=port,
        client_id=value["ENDPOINT_CLIENT_ID"],
        group_id=value["ENDPOINT_GROUP_ID"],
        answer_timeout_s=float(timeout),
        pbkdf2_iterations=iterations,
        allowed_origins=REFERENCE_ORIGINS + extra,
        keepalive_s=float(keepalive),
        linger_ms=linger,
    )


def describe() -> str:
    lines = [f"  {name:<28} {meaning} [{default}]" for name, (default, meaning) in VARIABLES.items()]
    lines.append("  and the handler's KAFKA_*, SCHEMA_REGISTRY_*, DB_HOSTNAME, DB_PORT, DB_PASSWORD, DB_SSLMODE")
    return "\n".join(lines)
