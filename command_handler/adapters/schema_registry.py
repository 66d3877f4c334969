"""The Schema Registry adapter: confluent_kafka's SchemaRegistryClient behind the project's own terms.

It owns what the handler and the synchronizer ask of the registry: wait until
it answers, look a schema up under a subject, register one (an incompatible
schema is the project's ``IncompatibleSchema``, not an HTTP 409), and the
readiness check of a topology's subjects.
"""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from command_handler.config import RegistrySettings
from command_handler.errors import IncompatibleSchema
from command_handler.retry import retry

# Confluent error codes meaning "not registered (here) yet".
NOT_FOUND_CODES = (40401, 40403)
INCOMPATIBLE = 409


class SchemaRegistry:
    def __init__(self, settings: RegistrySettings) -> None:
        self.url = settings.url
        self.client = SchemaRegistryClient(settings.client_conf())

    def wait_ready(self, timeout_s: float) -> None:
        """Retry with backoff until the registry answers; NotReady after ``timeout_s``."""
        retry(self.client.get_subjects, f"Schema Registry at {self.url}", timeout_s)

    def lookup(self, subject: str, schema_str: str) -> int | None:
        """The id under which ``schema_str`` is registered for ``subject``, or None if it is not."""
        try:
            return int(self.client.lookup_schema(subject, Schema(schema_str, "AVRO")).schema_id)  # type: ignore[arg-type]
        except SchemaRegistryError as err:
            if err.error_code in NOT_FOUND_CODES:
                return None
            raise

    def register(self, subject: str, schema_str: str) -> int:
        """Register ``schema_str`` under ``subject``; its id. IncompatibleSchema when the registry refuses it."""
        try:
            return self.client.register_schema(subject, Schema(schema_str, "AVRO"))
        except SchemaRegistryError as err:
            if err.http_status_code == INCOMPATIBLE:
                raise IncompatibleSchema(err.error_message) from err
            raise

    def missing_subjects(self, subjects: Mapping[str, str]) -> list[str]:
        """The subjects (subject -> schema text) under which their schema is not registered."""
        return [subject for subject, schema_str in subjects.items() if self.lookup(subject, schema_str) is None]
