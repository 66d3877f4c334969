"""State and rules of the local Schema Registry, kept in Postgres so ids survive a restart.

Only what the Confluent clients use: schema ids shared across subjects (the same
schema gets the same id), versions per subject with soft and permanent delete,
global and per-subject compatibility, and Avro compatibility checks done by the
``avro`` package's ReaderWriterCompatibilityChecker.

"The same schema" is meant as Confluent's registry means it: the parsed schemas
are equal (Avro's ``Schema.equals`` with docs and aliases), so whitespace, key
order and a redundant namespace do not matter, while custom properties such as
``avro.java.string`` do. The text a client registers is kept as it was sent
(compacted), or normalised when it asks for ``normalize=true``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from sqlalchemy import Connection, Engine, text

LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
DEFAULT_LEVEL = "BACKWARD"
GLOBAL = ""  # the subject key of the global config row

DDL = (
    """CREATE TABLE IF NOT EXISTS sr_schema (
        id serial PRIMARY KEY,
        schema_type text NOT NULL,
        fingerprint text NOT NULL UNIQUE,
        schema text NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sr_subject_version (
        subject text NOT NULL,
        version int NOT NULL,
        schema_id int NOT NULL REFERENCES sr_schema (id),
        deleted boolean NOT NULL DEFAULT false,
        PRIMARY KEY (subject, version))""",
    """CREATE TABLE IF NOT EXISTS sr_config (
        subject text PRIMARY KEY,
        compatibility text NOT NULL)""",
)


class RegistryError(Exception):
    """An error with Confluent's HTTP status and error code."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def subject_not_found(subject: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def invalid_schema(detail: str) -> RegistryError:
    return RegistryError(422, 42201, f"Invalid schema: {detail}")


@dataclass(frozen=True)
class Version:
    subject: str
    version: int
    schema_id: int
    schema: str
    schema_type: str

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "subject": self.subject,
            "version": self.version,
            "id": self.schema_id,
            "schema": self.schema,
        }
        if self.schema_type != "AVRO":
            body["schemaType"] = self.schema_type
        return body


PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
NAMED = {"record", "error", "enum", "fixed"}


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _identity(schema: Any, namespace: str | None) -> Any:
    """The parsed schema as Confluent's registry compares it: every name a full name, keys sorted,
    properties, docs, aliases and defaults kept."""
    if isinstance(schema, str):
        return schema if schema in PRIMITIVES else _full_name(schema, namespace)
    if isinstance(schema, list):
        return [_identity(branch, namespace) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    if isinstance(kind, dict | list):  # {"type": {...}} is that inner schema
        return _identity(kind, namespace)
    out = {k: v for k, v in schema.items() if k not in ("namespace", "name", "fields", "items", "values", "aliases")}
    if kind in NAMED:
        full = _full_name(str(schema.get("name", "")), schema.get("namespace", namespace))
        inner = full.rpartition(".")[0] or None
        out["name"] = full
        if "aliases" in schema:
            out["aliases"] = sorted(_full_name(a, inner) for a in schema["aliases"])
        if "fields" in schema:
            out["fields"] = [
                {
                    **{k: v for k, v in f.items() if k not in ("type", "order") or (k == "order" and v != "ascending")},
                    "type": _identity(f.get("type"), inner),
                }
                for f in schema["fields"]
            ]
        return out
    if kind == "array":
        out["items"] = _identity(schema.get("items"), namespace)
    elif kind == "map":
        out["values"] = _identity(schema.get("values"), namespace)
    elif kind in PRIMITIVES and set(out) == {"type"}:
        return kind  # {"type": "string"} is "string"
    return out


def identity(schema_json: Any) -> str:
    """A text equal for two schemas exactly when Confluent's registry takes them for the same schema."""
    return json.dumps(_identity(schema_json, None), sort_keys=True, separators=(",", ":"))


def parse_avro(schema_str: Any, normalize: bool = False) -> tuple[str, str, avro.schema.Schema]:
    """Validate an Avro schema; return the text to store (compact JSON as sent, or normalised), its
    identity (see ``identity``) and the parsed schema."""
    if not isinstance(schema_str, str) or not schema_str.strip():
        raise invalid_schema("'schema' must be a non-empty string")
    try:
        as_json = json.loads(schema_str)
        parsed = avro.schema.parse(schema_str)
    except (ValueError, avro.errors.AvroException) as exc:
        raise invalid_schema(str(exc)) from exc
    same = identity(as_json)
    return (same if normalize else json.dumps(as_json, separators=(",", ":"))), same, parsed


def _compatible(reader: avro.schema.Schema, writer: avro.schema.Schema) -> list[str]:
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    return [f"{m} at {loc}" for m, loc in zip(sorted(result.messages), sorted(result.locations), strict=False)] or [
        "incompatible"
    ]


def check_compatibility(level: str, new: avro.schema.Schema, existing: list[avro.schema.Schema]) -> list[str]:
    """Problems of ``new`` against ``existing`` (oldest first) under ``level``; empty when compatible."""
    if level == "NONE" or not existing:
        return []
    targets = existing if level.endswith("_TRANSITIVE") else existing[-1:]
    problems: list[str] = []
    for old in targets:
        if level.startswith(("BACKWARD", "FULL")):
            problems += _compatible(reader=new, writer=old)
        if level.startswith(("FORWARD", "FULL")):
            problems += _compatible(reader=old, writer=new)
    return problems


class RegistryStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_tables(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(8081)"))
            for ddl in DDL:
                conn.execute(text(ddl))
            # fingerprints are of the schema's identity (older versions hashed the text): bring them up to date
            for schema_id, schema in conn.execute(text("SELECT id, schema FROM sr_schema")).all():
                fingerprint = hashlib.sha256(identity(json.loads(schema)).encode()).hexdigest()
                conn.execute(
                    text("UPDATE sr_schema SET fingerprint = :f WHERE id = :i AND fingerprint <> :f"),
                    {"f": fingerprint, "i": schema_id},
                )

    # -- reads ---------------------------------------------------------------

    def schema_by_id(self, schema_id: int) -> tuple[str, str]:
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT schema, schema_type FROM sr_schema WHERE id = :id"), {"id": schema_id}
            ).first()
        if row is None:
            raise RegistryError(404, 40403, f"Schema {schema_id} not found")
        return row[0], row[1]

    def subjects(self, deleted: bool = False) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT DISTINCT subject FROM sr_subject_version WHERE deleted = false OR :deleted ORDER BY 1"),
                {"deleted": deleted},
            )
            return [r[0] for r in rows]

    def _versions(self, conn: Connection, subject: str, deleted: bool = False) -> list[Version]:
        rows = conn.execute(
            text(
                "SELECT v.subject, v.version, v.schema_id, s.schema, s.schema_type "
                "FROM sr_subject_version v JOIN sr_schema s ON s.id = v.schema_id "
                "WHERE v.subject = :subject AND (v.deleted = false OR :deleted) ORDER BY v.version"
            ),
            {"subject": subject, "deleted": deleted},
        )
        return [Version(*r) for r in rows]

    def versions(self, subject: str, deleted: bool = False) -> list[int]:
        with self.engine.connect() as conn:
            found = self._versions(conn, subject, deleted)
        if not found:
            raise subject_not_found(subject)
        return [v.version for v in found]

    def version(self, subject: str, version: str, deleted: bool = False) -> Version:
        with self.engine.connect() as conn:
            found = self._versions(conn, subject, deleted)
        return _pick_version(subject, found, version)

    def lookup(self, subject: str, schema_str: Any, deleted: bool = False, normalize: bool = False) -> Version:
        _, same, _ = parse_avro(schema_str, normalize)
        with self.engine.connect() as conn:
            found = self._versions(conn, subject, deleted)
        if not found:
            raise subject_not_found(subject)
        for v in found:
            if identity(json.loads(v.schema)) == same:
                return v
        raise RegistryError(404, 40403, "Schema not found")

    def compatibility(self, subject: str = GLOBAL, default_to_global: bool = False) -> str:
        with self.engine.connect() as conn:
            level = conn.execute(
                text("SELECT compatibility FROM sr_config WHERE subject = :s"), {"s": subject}
            ).scalar()
            if level is None and subject != GLOBAL and default_to_global:
                level = conn.execute(text("SELECT compatibility FROM sr_config WHERE subject = ''")).scalar()
                level = level or DEFAULT_LEVEL
        if level is None and subject == GLOBAL:
            return DEFAULT_LEVEL
        if level is None:
            raise RegistryError(404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured")
        return str(level)

    def test_compatibility(self, subject: str, version: str, schema_str: Any) -> list[str]:
        _, _, parsed = parse_avro(schema_str)
        with self.engine.connect() as conn:
            found = self._versions(conn, subject)
        old = _pick_version(subject, found, version)
        level = self.compatibility(subject, default_to_global=True)
        return check_compatibility(level, parsed, [avro.schema.parse(old.schema)])

    # -- writes --------------------------------------------------------------

    def set_compatibility(self, subject: str, level: Any) -> str:
        if not isinstance(level, str) or level.upper() not in LEVELS:
            raise RegistryError(422, 42203, f"Invalid compatibility level. Valid values are {', '.join(LEVELS)}")
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO sr_config (subject, compatibility) VALUES (:s, :c) "
                    "ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility"
                ),
                {"s": subject, "c": level.upper()},
            )
        return level.upper()

    def delete_compatibility(self, subject: str) -> str:
        level = self.compatibility(subject)
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM sr_config WHERE subject = :s"), {"s": subject})
        return level

    def register(self, subject: str, schema_str: Any, schema_type: str = "AVRO", normalize: bool = False) -> int:
        if schema_type != "AVRO":
            raise invalid_schema(f"schemaType {schema_type!r} is not supported here, only AVRO")
        stored, same, parsed = parse_avro(schema_str, normalize)
        fingerprint = hashlib.sha256(same.encode()).hexdigest()
        level = self.compatibility(subject, default_to_global=True)
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(8081)"))  # one writer at a time
            live = self._versions(conn, subject)
            for v in live:
                if identity(json.loads(v.schema)) == same:
                    return v.schema_id
            problems = check_compatibility(level, parsed, [avro.schema.parse(v.schema) for v in live])
            if problems:
                raise RegistryError(
                    409,
                    409,
                    f"Schema being registered is incompatible with an earlier schema for subject "
                    f'"{subject}" ({level}): {"; ".join(problems)}',
                )
            schema_id = conn.execute(
                text("SELECT id FROM sr_schema WHERE fingerprint = :f"), {"f": fingerprint}
            ).scalar()
            if schema_id is None:
                schema_id = conn.execute(
                    text("INSERT INTO sr_schema (schema_type, fingerprint, schema) VALUES (:t, :f, :s) RETURNING id"),
                    {"t": schema_type, "f": fingerprint, "s": stored},
                ).scalar_one()
            next_version = conn.execute(
                text("SELECT coalesce(max(version), 0) + 1 FROM sr_subject_version WHERE subject = :s"),
                {"s": subject},
            ).scalar_one()
            conn.execute(
                text("INSERT INTO sr_subject_version (subject, version, schema_id) VALUES (:s, :v, :i)"),
                {"s": subject, "v": next_version, "i": schema_id},
            )
            return int(schema_id)

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(8081)"))
            everything = self._versions(conn, subject, deleted=True)
            if not everything:
                raise subject_not_found(subject)
            live = self._versions(conn, subject)
            if permanent:
                if live:
                    raise RegistryError(
                        404,
                        40405,
                        f"Subject '{subject}' was not deleted first before being permanently deleted",
                    )
                conn.execute(text("DELETE FROM sr_subject_version WHERE subject = :s"), {"s": subject})
                conn.execute(text("DELETE FROM sr_config WHERE subject = :s"), {"s": subject})
                return [v.version for v in everything]
            if not live:
                raise RegistryError(404, 40404, f"Subject '{subject}' was soft deleted.")
            conn.execute(text("UPDATE sr_subject_version SET deleted = true WHERE subject = :s"), {"s": subject})
            return [v.version for v in live]


def _pick_version(subject: str, found: list[Version], version: str) -> Version:
    if not found:
        raise subject_not_found(subject)
    if version in ("latest", "-1"):
        return found[-1]
    try:
        number = int(version)
    except ValueError:
        number = 0
    if number < 1 or number > 2**31 - 1:
        raise RegistryError(
            422,
            42202,
            "The specified version is not a valid version id. Allowed values are between [1, 2^31-1]",
        )
    for v in found:
        if v.version == number:
            return v
    raise RegistryError(404, 40402, f"Version {number} not found.")
