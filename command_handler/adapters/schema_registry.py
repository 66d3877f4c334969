"""The Schema Registry adapter: confluent_kafka's SchemaRegistryClient behind the project's own terms.

It owns what the handler and the synchronizer ask of the registry: wait until
it answers, find a schema under a subject, register one (an incompatible
schema is the project's ``IncompatibleSchema``, not an HTTP 409), and the
readiness check of a topology's subjects.

Schemas are found by meaning, not by text. A registry compares the parsed
schema with its properties, so the Java-generated texts of a reference
deployment (every string written ``{"type":"string","avro.java.string":"String"}``)
are not found by a lookup of our plain texts. ``resolve`` therefore falls back to
the subject's registered versions and takes the newest whose Parsing Canonical
Form (what decides the binary encoding) equals ours: the handler writes with
that version's id and text, and ``sync`` registers nothing new.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from fastavro.schema import parse_schema, to_parsing_canonical_form

from command_handler.adapters.registry_client import Schema, SchemaRegistryClient, SchemaRegistryError
from command_handler.config import RegistrySettings
from command_handler.errors import IncompatibleSchema
from command_handler.retry import retry

# Confluent error codes meaning "not registered (here) yet".
NOT_FOUND_CODES = (40401, 40403)
INCOMPATIBLE = 409


@dataclass(frozen=True)
class Registered:
    """A registered schema: its id and its text as the registry holds it."""

    schema_id: int
    schema_str: str


@lru_cache(maxsize=256)
def canonical_form(schema_str: str) -> str:
    """Avro's Parsing Canonical Form: equal for schemas that encode alike (properties, docs,
    whitespace, key order and redundant namespaces left out)."""
    return str(to_parsing_canonical_form(parse_schema(json.loads(schema_str), _write_hint=False)))


class SchemaRegistry:
    def __init__(self, settings: RegistrySettings) -> None:
        self.url = settings.display()  # for messages: never the credentials of the URL
        self.client = SchemaRegistryClient(settings.client_conf())

    def wait_ready(self, timeout_s: float) -> None:
        """Retry with backoff until the registry answers; NotReady after ``timeout_s``."""
        retry(self.client.get_subjects, f"Schema Registry at {self.url}", timeout_s)

    def resolve(self, subject: str, schema_str: str) -> Registered | None:
        """The version under ``subject`` that means ``schema_str`` (found as text, else by canonical
        form, newest first), or None when no registered version does."""
        try:
            found = self.client.lookup_schema(subject, Schema(schema_str, "AVRO"))
            return Registered(int(found.schema_id), found.schema.schema_str or schema_str)  # type: ignore[arg-type]
        except SchemaRegistryError as err:
            if err.error_code not in NOT_FOUND_CODES:
                raise
            if err.error_code == 40401:  # no such subject
                return None
        wanted = canonical_form(schema_str)
        for version in sorted(self.client.get_versions(subject), reverse=True):
            registered = self.client.get_version(subject, version)
            text = registered.schema.schema_str or ""
            if canonical_form(text) == wanted:
                return Registered(int(registered.schema_id), text)  # type: ignore[arg-type]
        return None

    def lookup(self, subject: str, schema_str: str) -> int | None:
        """The id of the version under ``subject`` that means ``schema_str``, or None."""
        found = self.resolve(subject, schema_str)
        return None if found is None else found.schema_id

    def register(self, subject: str, schema_str: str) -> int:
        """Register ``schema_str`` under ``subject``; its id. IncompatibleSchema when the registry refuses it."""
        try:
            return self.client.register_schema(subject, Schema(schema_str, "AVRO"))
        except SchemaRegistryError as err:
            if err.http_status_code == INCOMPATIBLE:
                raise IncompatibleSchema(err.error_message) from err
            raise

    def resolve_all(self, subjects: Mapping[str, str]) -> tuple[dict[str, Registered], list[str]]:
        """For subject -> schema text: the registered version of each that has one, and the subjects
        under which no version means their schema (the handler cannot write those)."""
        found: dict[str, Registered] = {}
        missing: list[str] = []
        for subject, schema_str in subjects.items():
            registered = self.resolve(subject, schema_str)
            if registered is None:
                missing.append(subject)
            else:
                found[subject] = registered
        return found, missing
