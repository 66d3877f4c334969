"""The Schema Registry client: confluent_kafka's SchemaRegistryClient, configured from settings."""

from __future__ import annotations

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from command_handler.config import RegistrySettings
from command_handler.retry import retry

# Confluent error codes meaning "not registered (here) yet".
NOT_FOUND_CODES = (40401, 40403)


def make_registry_client(settings: RegistrySettings) -> SchemaRegistryClient:
    return SchemaRegistryClient(settings.client_conf())


def wait_for_registry(client: SchemaRegistryClient, url: str, timeout_s: float) -> None:
    retry(client.get_subjects, f"Schema Registry at {url}", timeout_s)


def registered_id(client: SchemaRegistryClient, subject: str, schema_str: str) -> int | None:
    """The id under which ``schema_str`` is registered for ``subject``, or None if it is not."""
    try:
        return int(client.lookup_schema(subject, Schema(schema_str, "AVRO")).schema_id)  # type: ignore[arg-type]
    except SchemaRegistryError as err:
        if err.error_code in NOT_FOUND_CODES:
            return None
        raise
