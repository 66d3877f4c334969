"""The synchronizer: make the topics and schema subjects of the topology exist.

Like the reference's synchronizer it runs before anything else; unlike it, it
deletes topics it does not know only when asked to (``prune``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from command_handler.errors import IncompatibleSchema, OperatorError
from command_handler.service_layer.ports import SchemaRegistry, TopicAdmin
from command_handler.topology import Topology

log = logging.getLogger(__name__)


class SyncError(OperatorError):
    """The topology could not be applied; the message says what and where."""


@dataclass
class SyncReport:
    topics_created: list[str] = field(default_factory=list)
    topics_present: list[str] = field(default_factory=list)
    topics_deleted: list[str] = field(default_factory=list)
    topic_warnings: list[str] = field(default_factory=list)
    subjects_registered: dict[str, int] = field(default_factory=dict)
    subjects_present: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.topics_created or self.topics_deleted or self.subjects_registered)

    def lines(self) -> list[str]:
        out = [f"topic {t}: created" for t in self.topics_created]
        out += [f"topic {t}: already there" for t in self.topics_present]
        out += [f"topic {t}: deleted (--prune)" for t in self.topics_deleted]
        out += [f"topic warning: {w}" for w in self.topic_warnings]
        out += [f"subject {s}: registered, id {i}" for s, i in self.subjects_registered.items()]
        out += [f"subject {s}: already there, id {i}" for s, i in self.subjects_present.items()]
        return out


def min_insync_replicas(replication: int) -> int:
    """Copies a write needs before it is acknowledged (``acks=all``): 2 of 3, 1 of 1 or 2."""
    return max(1, min(replication - 1, 2))


def sync_topics(admin: TopicAdmin, topology: Topology, report: SyncReport, prune: bool = False) -> None:
    brokers = admin.broker_count()
    existing = admin.topics()
    for topic in topology.topics:
        if topic.name in existing:
            report.topics_present.append(topic.name)
            if existing[topic.name] != topic.partitions:
                report.topic_warnings.append(
                    f"{topic.name} has {existing[topic.name]} partitions, the topology says {topic.partitions}"
                )
            continue
        replication = min(topic.replication_factor, brokers)
        if replication < topic.replication_factor:
            report.topic_warnings.append(
                f"{topic.name}: replication factor {replication}, not {topic.replication_factor}: "
                f"only {brokers} brokers (acks=all is then met by fewer copies)"
            )
        # acks=all means at least this many copies: all but one of the replicas (a lone replica: itself)
        config = {"min.insync.replicas": str(min_insync_replicas(replication)), **topic.config}
        if admin.create_topic(topic.name, topic.partitions, replication, config):
            report.topics_created.append(topic.name)
        else:
            report.topics_present.append(topic.name)
    if report.topics_created:
        admin.wait_listed(report.topics_created)
    if prune:
        known = {t.name for t in topology.topics}
        for name in sorted(set(existing) - known):
            admin.delete_topic(name)
            report.topics_deleted.append(name)


def sync_subjects(registry: SchemaRegistry, topology: Topology, report: SyncReport) -> None:
    for subject, record in topology.subjects().items():
        present = registry.lookup(subject, record.schema_str)
        if present is not None:
            report.subjects_present[subject] = present
            continue
        try:
            report.subjects_registered[subject] = registry.register(subject, record.schema_str)
        except IncompatibleSchema as err:
            raise SyncError(
                f"subject {subject}: the schema of {record.full_name} is incompatible with the one "
                f"already registered: {err}"
            ) from err
