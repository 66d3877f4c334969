"""The composition root: builds adapters from settings and hands them to the services.

Entrypoints call it; it imports no entrypoint. ``build_handler`` returns the
wired parts of the command handler, which ``entrypoints.consumer.HandlerLoop``
runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError
from sqlalchemy import Engine

from command_handler.adapters.avro_codec import AvroCodec, OutMessage
from command_handler.adapters.database import make_engine, wait_for_database
from command_handler.adapters.kafka_admin import KafkaAdmin
from command_handler.adapters.kafka_producer import ProducerThread
from command_handler.adapters.kafka_transactions import TransactionalOutput, transactional_conf
from command_handler.adapters.metrics import Metrics
from command_handler.adapters.schema_registry import SchemaRegistry
from command_handler.adapters.schema_version import database_revision, expected_head
from command_handler.adapters.unit_of_work import SqlAlchemyUnitOfWork
from command_handler.config import Settings
from command_handler.errors import OperatorError
from command_handler.service_layer.commands import CommandService
from command_handler.service_layer.synchronizer import SyncReport, sync_subjects, sync_topics
from command_handler.topology import Topology, load_topology

log = logging.getLogger(__name__)


def topology_for(settings: Settings) -> Topology:
    return load_topology(settings.topics.by_env())


def synchronize(settings: Settings, prune: bool = False, partitions: int | None = None) -> SyncReport:
    """Wait for the broker and the registry (bounded), then apply the topology to both.

    ``partitions`` overrides the topology's partition count of topics it creates (tests, local experiments).
    """
    topology = topology_for(settings)
    if partitions is not None:
        topology = topology.with_partitions(partitions)
    admin, registry = _wait_for_kafka_and_registry(settings)
    return _apply_topology(admin, registry, topology, prune)


def _wait_for_kafka_and_registry(settings: Settings) -> tuple[KafkaAdmin, SchemaRegistry]:
    admin = KafkaAdmin(settings.kafka)
    brokers = admin.wait_ready(settings.startup_timeout_s)
    log.info("kafka at %s answers (%d brokers)", settings.kafka.brokers, brokers)
    registry = SchemaRegistry(settings.registry)
    registry.wait_ready(settings.startup_timeout_s)
    log.info("schema registry at %s answers", settings.registry.display())
    return admin, registry


def _apply_topology(admin: KafkaAdmin, registry: SchemaRegistry, topology: Topology, prune: bool = False) -> SyncReport:
    report = SyncReport()
    sync_topics(admin, topology, report, prune=prune)
    sync_subjects(registry, topology, report)
    return report


def kafka_consumer_conf(settings: Settings, metrics: Metrics | None = None) -> dict[str, Any]:
    k = settings.kafka
    return {
        **k.common(),
        "group.id": k.group_id,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": k.session_timeout_ms,
        "fetch.wait.max.ms": k.fetch_wait_max_ms,
        # prefetch at most 8 MiB (librdkafka's default is 64 MiB): far more than a second of commands
        "queued.max.messages.kbytes": 8192,
        **(
            {"statistics.interval.ms": 5000, "stats_cb": metrics.on_statistics(settings.topics.commands)}
            if metrics
            else {}
        ),
        **k.consumer_extra,
        # manual offsets, whatever the extras say: nothing is committed before its outputs were acknowledged
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
    }


def kafka_producer_conf(settings: Settings) -> dict[str, Any]:
    k = settings.kafka
    return {
        **k.common(),
        "linger.ms": k.linger_ms,
        **k.producer_extra,  # may not set acks or idempotence (see KafkaSettings.problems)
        "acks": "all",
        "enable.idempotence": True,
    }


def _check_ready(
    settings: Settings, topology: Topology, admin: KafkaAdmin, registry: SchemaRegistry, engine: Engine
) -> dict[str, str]:
    """Refuse to start, with the fix in the message, when the database or topology is not in place.
    Returns, per subject, the registered schema text the handler writes with (it means ours)."""
    current, head = database_revision(engine), expected_head()
    if current != head:
        raise OperatorError(
            f"database {settings.database.display()} is at revision {current}, the handler needs {head}: "
            "run `command-handler migrate`"
        )
    missing_topics = sorted({t.name for t in topology.topics} - set(admin.topics()))
    if missing_topics:
        raise OperatorError(f"topics missing: {', '.join(missing_topics)}: run `command-handler sync` (or run --sync)")
    found, missing_subjects = registry.resolve_all({s: r.schema_str for s, r in topology.subjects().items()})
    if missing_subjects:
        raise OperatorError(
            f"schema subjects not registered: {', '.join(missing_subjects)}: run `command-handler sync` (or run --sync)"
        )
    for subject, registered in sorted(found.items()):
        log.info("subject %s: writing with schema id %d", subject, registered.schema_id)
    return {subject: registered.schema_str for subject, registered in found.items()}


MakeProducer = Callable[
    [
        Callable[[Hashable], None],
        Callable[[Hashable, KafkaError], None],
        Callable[[Hashable, KafkaError], list[OutMessage] | None],
    ],
    ProducerThread,
]


@dataclass(frozen=True)
class HandlerParts:
    """Everything the consumer loop runs with, wired and checked."""

    consumer: Consumer
    make_producer: MakeProducer  # (on delivered, on failed, on refused) -> the producer thread
    codec: AvroCodec
    service: CommandService
    command_topic: str
    dead_letter_topic: str
    batch_size: int
    stats_interval_s: float
    metrics: Metrics
    # KAFKA_TRANSACTIONS=true: the transactional producer (outputs and offsets of a batch in one transaction)
    make_transactional: Callable[[], TransactionalOutput] | None = None


def build_handler(settings: Settings, sync_first: bool = False, metrics: Metrics | None = None) -> HandlerParts:
    """Wait for every service (bounded), check the database and topology, and wire the handler."""
    topology = topology_for(settings)
    admin, registry = _wait_for_kafka_and_registry(settings)
    engine = make_engine(settings.database)
    wait_for_database(engine, settings.startup_timeout_s)
    log.info("database %s answers", settings.database.display())
    if sync_first:
        for line in _apply_topology(admin, registry, topology).lines():
            log.info("sync: %s", line)
    writer_schemas = _check_ready(settings, topology, admin, registry, engine)
    producer_conf = kafka_producer_conf(settings)
    metrics = metrics or Metrics()
    on_conflict = metrics.db_retries.labels(kind="conflict").inc
    return HandlerParts(
        consumer=Consumer(kafka_consumer_conf(settings, metrics), logger=logging.getLogger("librdkafka.consumer")),
        make_producer=lambda delivered, failed, refused: ProducerThread(
            producer_conf, delivered, failed, on_refused=refused
        ),
        codec=AvroCodec(
            registry.client,
            topology,
            settings.topics,
            writer_schemas,
            unknown_schema_grace_s=settings.registry.unknown_schema_grace_s,
        ),
        service=CommandService(lambda: SqlAlchemyUnitOfWork(engine), on_conflict=on_conflict),
        command_topic=settings.topics.commands,
        dead_letter_topic=settings.topics.dead_letter,
        batch_size=settings.batch_size,
        stats_interval_s=settings.stats_interval_s,
        metrics=metrics,
        make_transactional=(
            (lambda: TransactionalOutput(transactional_conf(producer_conf, settings.kafka.group_id)))
            if settings.kafka.transactions
            else None
        ),
    )
