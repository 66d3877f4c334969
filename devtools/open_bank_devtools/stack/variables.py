"""The local stack's own variables and defaults: a light module, read by ``--help`` without importing the stack."""

HOST = "127.0.0.1"
REGISTRY_DB = "schema_registry"
BROKERS = ("kafka", "tansu")
DEFAULT_BROKER = "kafka"

# variable -> default port
PORTS = {
    "STACK_BROKER_PORT": 9092,
    "STACK_CONTROLLER_PORT": 9093,
    "STACK_BROKER_TLS_PORT": 9094,
    "STACK_REGISTRY_PORT": 8081,
    "STACK_REGISTRY_HEALTH_PORT": 8091,
    "STACK_DB_PORT": 5442,
}

# the stack's own variables, for --help
STACK_VARIABLES = (
    ("STACK_DIR", "logs, PID files, Kafka data, PostgreSQL cluster, env file [~/.local/state/open-bank-stack]"),
    ("STACK_BROKER", f"kafka (Apache Kafka, KRaft) or tansu [{DEFAULT_BROKER}]; `up --broker` overrides it"),
    ("STACK_BROKER_PORT", "plaintext listener of the broker [9092]"),
    ("STACK_CONTROLLER_PORT", "KRaft controller listener (kafka) [9093]"),
    ("STACK_TLS_DIR", "with ca.pem, server.pem, server.key: a mutual-TLS listener too (kafka) [off]"),
    ("STACK_BROKER_TLS_PORT", "that TLS listener [9094]"),
    ("STACK_REGISTRY_PORT", "Apicurio Registry (Confluent's API at /apis/ccompat/v7) [8081]"),
    ("STACK_REGISTRY_HEALTH_PORT", "Apicurio Registry's management port: /health/ready [8091]"),
    (
        "STACK_REGISTRY_JAVA_HOME",
        "a JDK >= 21 for Apicurio Registry [the newest found, e.g. /usr/lib/jvm/temurin-25-jdk-amd64]",
    ),
    ("STACK_POSTGRES", "own (a cluster in STACK_DIR) or external (the DB_* server) [own]"),
    ("STACK_DB_PORT", "port of the stack's own PostgreSQL, loopback only [5442]"),
    ("STACK_ENDPOINT_PORT", "the GraphQL endpoint and the bank's page, loopback only; 0: none [8888]"),
    ("STACK_REGISTRY_DB", "database of the registry's state (Apicurio's SQL storage) [schema_registry]"),
    ("OPEN_BANK_CACHE", "where Kafka's jars and Apicurio Registry are cached [~/.cache/open-bank]"),
)
