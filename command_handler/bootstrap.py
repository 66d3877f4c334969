"""The composition root: builds adapters from settings and hands them to the services.

Entrypoints call it; it imports no entrypoint. ``build_handler`` returns the
command handler's loop (``service_layer.loop.HandlerLoop``), wired with the output the
settings ask for: acknowledged outputs (the producer thread) or transactional ones.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import Engine

from command_handler.adapters.avro_codec import AvroCodec
from command_handler.adapters.database import make_engine, wait_for_database
from command_handler.adapters.kafka_admin import KafkaAdmin
from command_handler.adapters.kafka_consumer import KafkaCommandSource
from command_handler.adapters.kafka_producer import AcknowledgedOutput, acknowledged_conf
from command_handler.adapters.kafka_transactions import TransactionalOutput, transactional_conf
from command_handler.adapters.metrics import Metrics
from command_handler.adapters.schema_registry import SchemaRegistry
from command_handler.adapters.schema_version import database_revision, expected_head
from command_handler.adapters.unit_of_work import SqlAlchemyUnitOfWork
from command_handler.config import Settings
from command_handler.errors import OperatorError
from command_handler.service_layer.commands import CommandService
from command_handler.service_layer.delivery import DEFAULT_MAX_MESSAGE_BYTES, Output, Pipeline
from command_handler.service_layer.loop import HandlerLoop
from command_handler.service_layer.ports import Readiness
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
        # what was stored is committed once a second, whatever the load (a commit per batch cost the
        # group its coordinator's attention at 1,000 commands/s)
        "auto.commit.interval.ms": 1000,
        **k.consumer_extra,
        # offsets stored by the loop only, whatever the extras say: nothing is committed before its outputs
        # were acknowledged; with transactions, the transactions commit them
        "enable.auto.commit": not k.transactions,
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


def max_message_bytes(settings: Settings) -> int:
    """The producer's message size limit (``message.max.bytes``, librdkafka's default unless an extra sets it)."""
    raw = settings.kafka.producer_extra.get("message.max.bytes")
    return int(raw) if raw and raw.isdigit() else DEFAULT_MAX_MESSAGE_BYTES


def build_handler(
    settings: Settings, readiness: Readiness, sync_first: bool = False, metrics: Metrics | None = None
) -> HandlerLoop:
    """Wait for every service (bounded), check the database and topology, and wire the handler's loop."""
    topology = topology_for(settings)
    admin, registry = _wait_for_kafka_and_registry(settings)
    engine = make_engine(settings.database)
    wait_for_database(engine, settings.startup_timeout_s)
    log.info("database %s answers", settings.database.display())
    if sync_first:
        for line in _apply_topology(admin, registry, topology).lines():
            log.info("sync: %s", line)
    writer_schemas = _check_ready(settings, topology, admin, registry, engine)
    metrics = metrics or Metrics()
    codec = AvroCodec(
        registry.client,
        topology,
        settings.topics,
        writer_schemas,
        unknown_schema_grace_s=settings.registry.unknown_schema_grace_s,
    )
    service = CommandService(
        lambda: SqlAlchemyUnitOfWork(engine), on_conflict=metrics.db_retries.labels(kind="conflict").inc
    )
    pipeline = Pipeline(codec, service, settings.topics.dead_letter, metrics, max_message_bytes(settings))
    stopping = threading.Event()
    producer_conf = kafka_producer_conf(settings)
    output: Output
    if settings.kafka.transactions:
        conf = transactional_conf(producer_conf, settings.kafka.group_id)
        output = TransactionalOutput(conf, pipeline.replacement, metrics, stopping)
    else:
        output = AcknowledgedOutput(acknowledged_conf(producer_conf), pipeline.replacement, metrics)
    return HandlerLoop(
        KafkaCommandSource(kafka_consumer_conf(settings, metrics), settings.topics.commands),
        output,
        pipeline,
        readiness,
        metrics,
        batch_size=settings.batch_size,
        stats_interval_s=settings.stats_interval_s,
        stopping=stopping,
    )
