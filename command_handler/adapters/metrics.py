"""Prometheus metrics of the handler, served at ``/metrics`` on the health port (prometheus_client).

* ``open_bank_commands_total{type,outcome}``: commands handled (replays included); outcome
  ``confirmed``, ``failed`` (a failure answer) or ``refused`` (by the database: dead-lettered).
* ``open_bank_batch_size`` and ``open_bank_batch_seconds``: commands per database transaction, and the
  time from the first command's decoding to the batch's outputs being queued.
* ``open_bank_dead_letters_total{reason}``: records set aside; reason one of ``null-value``,
  ``not-avro``, ``unknown-schema``, ``not-a-command``, ``undecodable``, ``key-too-large``,
  ``refused-by-database``, ``output-refused``.
* ``open_bank_producer_queue_depth``: command outputs waiting for the producer thread.
* ``open_bank_delivery_seconds``: from a command's outputs being queued to the broker's
  acknowledgement of all of them.
* ``open_bank_consumer_lag{partition}``: records behind the end of each assigned command partition
  (from librdkafka's statistics).
* ``open_bank_db_retries_total{kind}``: database retries: ``conflict`` (a deadlock or serialization
  failure, retried at once) or ``unavailable`` (waited for).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
BATCH_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
LATENCIES = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter("open_bank_commands", "Commands handled", ["type", "outcome"], registry=r)
        self.batch_size = Histogram(
            "open_bank_batch_size", "Commands per database transaction", buckets=BATCH_SIZES, registry=r
        )
        self.batch_seconds = Histogram(
            "open_bank_batch_seconds", "Time to handle a batch of commands", buckets=LATENCIES, registry=r
        )
        self.dead_letters = Counter("open_bank_dead_letters", "Records set aside", ["reason"], registry=r)
        self.producer_queue_depth = Gauge(
            "open_bank_producer_queue_depth", "Command outputs waiting for the producer thread", registry=r
        )
        self.delivery_seconds = Histogram(
            "open_bank_delivery_seconds",
            "From a command's outputs queued to all of them acknowledged",
            buckets=LATENCIES,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "open_bank_consumer_lag", "Records behind the end of an assigned partition", ["partition"], registry=r
        )
        self.db_retries = Counter("open_bank_db_retries", "Database retries", ["kind"], registry=r)
        # the labelled counters of the per-command count, looked up once (labels() takes a lock and builds
        # a key each time: a measurable part of the handler's CPU per command)
        self._command_counters: dict[tuple[str, str], Counter] = {}

    # the service layer's Telemetry port
    def command(self, kind: str, outcome: str) -> None:
        counter = self._command_counters.get((kind, outcome))
        if counter is None:
            counter = self._command_counters[kind, outcome] = self.commands.labels(type=kind, outcome=outcome)
        counter.inc()

    def dead_lettered(self, kind: str) -> None:
        self.dead_letters.labels(reason=kind).inc()

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def db_retry(self, kind: str) -> None:
        self.db_retries.labels(kind=kind).inc()

    def delivered(self, seconds: float) -> None:
        self.delivery_seconds.observe(seconds)

    def released(self, partitions: list[int]) -> None:
        self.forget_partitions(partitions)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.producer_queue_depth.set_function(depth)

    def on_statistics(self, topic: str) -> Callable[[str], None]:
        """A librdkafka ``stats_cb`` that sets the consumer lag of ``topic``'s assigned partitions."""

        def update(stats_json: str) -> None:
            try:
                partitions = json.loads(stats_json).get("topics", {}).get(topic, {}).get("partitions", {})
            except ValueError:
                return
            for number, p in partitions.items():
                lag = p.get("consumer_lag", -1)
                if number != "-1" and lag >= 0:
                    self.consumer_lag.labels(partition=number).set(lag)

        return update

    def forget_partitions(self, partitions: list[int]) -> None:
        for number in partitions:
            with contextlib.suppress(KeyError):  # never reported
                self.consumer_lag.remove(str(number))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
