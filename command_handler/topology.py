"""The topology: topics, their partitions and configs, and the Avro records on each.

It is data (``schemas/topology.json`` and the ``.avsc`` files beside it), read
here once. Topic names can be overridden by the ``KAFKA_*_TOPIC`` variables;
subjects follow the TopicRecordNameStrategy: ``<topic>-<record full name>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"  # package data: the .avsc files and topology.json


@dataclass(frozen=True)
class TopicSpec:
    """A topic as ``topology.json`` declares it: its role, default name, variable and meaning."""

    role: str  # the field of config.Topics, e.g. commands
    name: str
    env: str  # the variable that overrides the name, e.g. KAFKA_COMMAND_TOPIC
    about: str


@cache
def topic_specs(schema_dir: Path = SCHEMA_DIR) -> tuple[TopicSpec, ...]:
    spec = json.loads((schema_dir / "topology.json").read_text())
    return tuple(TopicSpec(t["role"], t["name"], t["env"], t["about"]) for t in spec["topics"])


@dataclass(frozen=True)
class Record:
    name: str  # short name, e.g. ConfirmMoneyTransfer
    full_name: str  # e.g. nl.openweb.data.ConfirmMoneyTransfer
    schema_str: str  # the .avsc text, compact JSON


@dataclass(frozen=True)
class Topic:
    name: str
    env: str
    partitions: int
    replication_factor: int
    config: dict[str, str]
    records: tuple[Record, ...]

    def subjects(self) -> dict[str, Record]:
        return {f"{self.name}-{r.full_name}": r for r in self.records}


@dataclass(frozen=True)
class Topology:
    topics: tuple[Topic, ...]
    records: dict[str, Record] = field(repr=False)

    def with_partitions(self, partitions: int) -> Topology:
        return replace(self, topics=tuple(replace(t, partitions=partitions) for t in self.topics))

    def subjects(self) -> dict[str, Record]:
        result: dict[str, Record] = {}
        for topic in self.topics:
            result.update(topic.subjects())
        return result


@cache
def load_records(schema_dir: Path = SCHEMA_DIR) -> dict[str, Record]:
    records = {}
    for path in sorted(schema_dir.glob("*.avsc")):
        schema = json.loads(path.read_text())
        full_name = f"{schema['namespace']}.{schema['name']}"
        records[schema["name"]] = Record(schema["name"], full_name, json.dumps(schema, separators=(",", ":")))
    return records


def load_topology(topic_names: dict[str, str] | None = None, schema_dir: Path = SCHEMA_DIR) -> Topology:
    """The topology, with topic names taken from ``topic_names`` (env name -> topic) where given."""
    spec = json.loads((schema_dir / "topology.json").read_text())
    records = load_records(schema_dir)
    defaults = spec["defaults"]
    topics = []
    for t in spec["topics"]:
        name = (topic_names or {}).get(t["env"], t["name"])
        topics.append(
            Topic(
                name=name,
                env=t["env"],
                partitions=int(t.get("partitions", 1)),
                replication_factor=int(t.get("replication_factor", defaults["replication_factor"])),
                config={**defaults["config"], **t.get("config", {})},
                records=tuple(records[r] for r in t.get("records", [])),
            )
        )
    return Topology(tuple(topics), records)
