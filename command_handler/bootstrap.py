"""The composition root: builds adapters from settings and hands them to the services."""

from __future__ import annotations

import logging

from command_handler.adapters.kafka_admin import KafkaAdmin
from command_handler.adapters.schema_registry import make_registry_client, wait_for_registry
from command_handler.config import Settings
from command_handler.service_layer.synchronizer import SyncReport, sync_subjects, sync_topics
from command_handler.topology import Topology, load_topology

log = logging.getLogger(__name__)


def topology_for(settings: Settings) -> Topology:
    return load_topology(settings.topics.by_env())


def synchronize(settings: Settings, prune: bool = False) -> SyncReport:
    """Wait for the broker and the registry (bounded), then apply the topology to both."""
    topology = topology_for(settings)
    admin = KafkaAdmin(settings.kafka)
    registry = make_registry_client(settings.registry)
    brokers = admin.wait_ready(settings.startup_timeout_s)
    log.info("kafka at %s answers (%d brokers)", settings.kafka.brokers, brokers)
    wait_for_registry(registry, settings.registry.url, settings.startup_timeout_s)
    report = SyncReport()
    sync_topics(admin, topology, report, prune=prune)
    sync_subjects(registry, topology, report)
    return report
