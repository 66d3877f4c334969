"""The command topic's consumer as a ``CommandSource``: records without Kafka types, pause and rewind,
rebalances forwarded to the loop, and offsets committed at a bounded rate.

Offsets: the loop stores what its output says may be committed (``store_offsets``, librdkafka's offset
store, ``enable.auto.offset.store=false``); with acknowledged outputs librdkafka commits what is stored
every ``auto.commit.interval.ms`` (``enable.auto.commit=true``), whatever the load, and the loop commits
synchronously on a revoke; ``close`` commits the last stored offsets. With transactional outputs
nothing is stored: the transactions commit the offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from command_handler.domain.model import PartitionId, Record, Source
from command_handler.service_layer.ports import RebalanceListener

log = logging.getLogger(__name__)


def _record(msg: Message) -> Record:
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    headers = msg.headers() or ()  # a list of (name, bytes | None) from the consumer
    return Record(Source(topic, partition, offset), msg.key(), msg.value(), tuple(headers))  # type: ignore[arg-type]


def _ids(partitions: list[TopicPartition]) -> set[PartitionId]:
    return {(p.topic, p.partition) for p in partitions}


def _tps(partitions: Iterable[PartitionId]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in partitions]


class KafkaCommandSource:
    def __init__(self, conf: dict[str, Any], topic: str) -> None:
        self._consumer = Consumer(conf, logger=logging.getLogger("librdkafka.consumer"))
        self._topic = topic
        self._listener: RebalanceListener | None = None

    def subscribe(self, listener: RebalanceListener) -> None:
        self._listener = listener
        self._consumer.subscribe(
            [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info("consuming %s", self._topic)

    # rebalance callbacks, run inside poll
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._listener is not None
        paused = self._listener.assigned(_ids(partitions))
        # assigned here rather than after the callback, so that their pause state is set now (a partition
        # paused, lost and given back keeps librdkafka's pause flag otherwise)
        consumer.assign(partitions)
        if paused:
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._listener is not None
        self._listener.revoked(_ids(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._listener is not None
        self._listener.lost(_ids(partitions))

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        first = self._consumer.poll(timeout_s)
        if first is None:
            return []
        messages = [first, *(self._consumer.consume(max_records - 1, 0) if max_records > 1 else [])]
        records = []
        for msg in messages:
            error = msg.error()
            if error is not None:
                log.warning("consumer error: %s", error)
                continue
            records.append(_record(msg))
        return records

    def assignment(self) -> set[PartitionId]:
        return _ids(self._consumer.assignment())

    def pause(self, partitions: Iterable[PartitionId]) -> None:
        tps = _tps(partitions)
        if tps:
            self._consumer.pause(tps)

    def resume(self, partitions: Iterable[PartitionId]) -> None:
        tps = _tps(partitions)
        if tps:
            self._consumer.resume(tps)

    def rewind(self, source: Source) -> None:
        try:
            self._consumer.seek(TopicPartition(source.topic, source.partition, source.offset))
        except KafkaException as err:  # no longer assigned: the next owner reads it
            log.info("could not put back %s: %s", source, err)

    def store(self, offsets: dict[PartitionId, int]) -> None:
        if not offsets:
            return
        try:
            self._consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()])
        except KafkaException as err:  # a partition no longer assigned: its records come again elsewhere
            log.info("offsets of %d partitions not stored: %s", len(offsets), err)

    def commit(self) -> None:
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as err:
            if err.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("commit failed (the commands since the last commit will be handled again): %s", err)

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def close(self) -> None:
        self._consumer.close()
