"""The consumer loop: commands in, outcomes to the producer thread, offsets committed when delivered.

One command's path: poll -> decode (Avro) -> ``CommandService.handle`` (one
database transaction for the whole batch) -> encode -> producer queue ->
broker acknowledgement -> offset committable. An offset is committed only
after every output of its command was acknowledged, so a crash anywhere makes
the command come back, and the stored outcome makes its replay identical.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from functools import partial
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from command_handler.adapters.avro_codec import OutMessage, PoisonMessage
from command_handler.adapters.dead_letters import dead_letter
from command_handler.adapters.health import Health
from command_handler.adapters.kafka_producer import ProducerThread
from command_handler.adapters.kafka_transactions import Fenced, OutputRefused
from command_handler.adapters.offsets import OffsetTracker, TopicPartitionKey
from command_handler.bootstrap import HandlerParts
from command_handler.domain.model import Command, Outcome, Source
from command_handler.errors import Conflict, Rejected, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
REVOKE_WAIT_S = 20.0
SHUTDOWN_WAIT_S = 10.0


class Stats:
    """Counters since the last statistics line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.commands = 0
        self.batches = 0
        self.dead_lettered = 0
        self.since = time.monotonic()

    def line(self, in_flight: int, queued: int) -> str:
        elapsed = max(time.monotonic() - self.since, 1e-9)
        size = self.commands / self.batches if self.batches else 0.0
        text = (
            f"stats: {self.commands} commands in {self.batches} batches ({self.commands / elapsed:.1f}/s, "
            f"{size:.1f} per batch), {self.dead_lettered} dead-lettered, {in_flight} awaiting delivery, "
            f"{queued} queued for the producer"
        )
        self.reset()
        return text


class HandlerLoop:
    def __init__(self, parts: HandlerParts, health: Health) -> None:
        self.consumer = parts.consumer
        self.tracker = OffsetTracker()
        self.producer = self._make_producer(parts)
        self.codec = parts.codec
        self.service = parts.service
        self.command_topic = parts.command_topic
        self.dead_letter_topic = parts.dead_letter_topic
        self.batch_size = parts.batch_size
        self.health = health
        self.stats = Stats()
        self.stats_interval_s = parts.stats_interval_s
        self.metrics = parts.metrics
        self.metrics.watch_queue(self._queued)
        # command outputs awaiting the broker: when they were queued, and the record they answer (for a dead letter)
        self._in_flight: dict[Hashable, tuple[float, Message]] = {}
        self.stopping = threading.Event()
        self.fatal: str | None = None
        self._closing = False
        self._assigned: set[TopicPartitionKey] = set()
        self._paused = False  # the assigned partitions are paused while a dependency is waited for
        self._batch: list[Message] = []  # the records of the batch being handled
        # partitions taken away during this batch (even if given back since: their records come again)
        self._moved: set[TopicPartitionKey] = set()

    def _make_producer(self, parts: HandlerParts) -> ProducerThread | None:
        return parts.make_producer(self._delivered, self._delivery_failed, self._refused)

    # -- control --------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        if not self.stopping.is_set():
            log.info("stopping: %s", why)
        self.stopping.set()

    def _delivered(self, token: Hashable) -> None:
        assert isinstance(token, tuple)
        self.tracker.done(token[0], token[1])
        in_flight = self._in_flight.pop(token, None)
        if in_flight is not None:
            self.metrics.delivery_seconds.observe(time.monotonic() - in_flight[0])

    def _refused(self, token: Hashable, err: KafkaError) -> list[OutMessage] | None:
        """An output of the command at ``token`` can never be written (the producer refused it before
        sending, e.g. too large because of the command's own key): the command's dead letter instead.
        Runs on the producer thread."""
        in_flight = self._in_flight.get(token)
        if in_flight is None:
            return None
        reason = f"an answer to this record cannot be written: {err.str()}"
        return [self._set_aside(in_flight[1], reason, "output-refused")]

    def _delivery_failed(self, token: Hashable, err: KafkaError) -> None:
        self.fatal = f"the broker did not accept an output of {token}: {err}"
        log.error("%s; stopping without committing it", self.fatal)
        self.stopping.set()

    # -- rebalance callbacks (run inside consumer.poll, on this thread) ---------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        self.tracker.forget(tps)
        self._assigned |= tps
        # assigned here rather than after the callback, so that their pause state is set now: paused while
        # a dependency is waited for, else resumed (whatever a former assignment of theirs left)
        consumer.assign(partitions)
        if self._paused:
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)
            self.health.ready = True
            self.health.reason = f"consuming {len(self._assigned)} partitions"
        log.info("assigned %d partitions: %s", len(tps), sorted(p for _, p in tps))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        self._abandon_unqueued(tps)
        if not self._closing and not self.tracker.wait_all_done(REVOKE_WAIT_S, tps):
            log.warning("revoked partitions still have outputs in flight: their commands will be handled again")
        self._commit(sync=True, partitions=tps)
        self._release(tps)
        log.info("revoked %d partitions", len(tps))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        self._abandon_unqueued(tps)
        self._release(tps)
        log.warning("lost %d partitions (their uncommitted commands will be handled again)", len(tps))

    def _abandon_unqueued(self, tps: set[TopicPartitionKey]) -> None:
        """Partitions taken away in the middle of a batch (while a dependency was waited for): their records
        of the batch not queued yet are left to the next owner, so nobody waits for them."""
        for msg in self._batch:
            if msg.error() is not None:
                continue
            token = origin(msg)
            if token[0] in tps and token not in self._in_flight:
                self.tracker.abandon(*token)

    def _owned(self, msg: Message) -> bool:
        """Whether ``msg``'s partition stayed assigned to this handler all through the batch (a rebalance
        during a wait may have moved it: then its records are the next owner's, and this handler writes
        nothing for them; given back meanwhile, they are consumed again from the committed offset)."""
        tp = origin(msg)[0]
        return tp in self._assigned and tp not in self._moved

    def _release(self, tps: set[TopicPartitionKey]) -> None:
        """No longer ours: forget what was in flight there (another handler will redo it)."""
        self.tracker.forget(tps)
        self._assigned -= tps
        self._moved |= tps
        self.metrics.forget_partitions([p for _, p in tps])

    # -- the loop -------------------------------------------------------------

    def run(self) -> int:
        self.consumer.subscribe(
            [self.command_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._start_output()
        self.health.reason = "joining the consumer group"
        last_stats = time.monotonic()
        log.info("consuming %s", self.command_topic)
        try:
            while not self.stopping.is_set():
                self.health.beat()
                batch = self._poll()
                if batch:
                    self._batch, self._moved = batch, set()
                    try:
                        self._process(batch)
                    finally:
                        self._batch, self._moved = [], set()
                self._commit()
                if self.stats_interval_s and time.monotonic() - last_stats >= self.stats_interval_s:
                    last_stats = time.monotonic()
                    log.info(self.stats.line(self.tracker.in_flight(), self._queued()))
        finally:
            self._shutdown()
        return 1 if self.fatal else 0

    def _start_output(self) -> None:
        assert self.producer is not None
        self.producer.start()

    def _queued(self) -> int:
        return self.producer.queued() if self.producer is not None else 0

    def _poll(self) -> list[Message]:
        first = self.consumer.poll(0.1)
        if first is None:
            return []
        rest = self.consumer.consume(self.batch_size - 1, 0) if self.batch_size > 1 else []
        return [first, *rest]

    def _process(self, messages: list[Message]) -> None:
        started = time.monotonic()
        work: list[tuple[Message, Command]] = []
        for msg in messages:
            error = msg.error()
            if error is not None:
                log.warning("consumer error: %s", error)
                continue
            if not self._owned(msg):  # moved to another handler during a wait in this batch
                continue
            tp, offset = origin(msg)
            self.tracker.started(tp, offset)
            try:
                command = self._until_available(partial(self.codec.decode_command, msg.value()), "decoding")
            except PoisonMessage as poison:
                self._dead_letter(msg, str(poison), poison.kind)
                continue
            if command is None:  # stopping: what was not handled stays uncommitted and comes back
                for m in [*(m for m, _ in work), msg]:
                    self.tracker.abandon(*origin(m))
                return
            work.append((msg, command))
        work = [(m, c) for m, c in work if self._owned(m)]
        if not work:
            return
        commands = [c for _, c in work]
        sources = [Source(*tp, offset) for tp, offset in (origin(m) for m, _ in work)]
        results = self._until_available(lambda: self.service.handle_isolated(commands, sources), "database")
        if results is None:  # stopping
            for m, _ in work:
                self.tracker.abandon(*origin(m))
            return
        self.stats.batches += 1
        self.stats.commands += len(work)
        self.metrics.batch_size.observe(len(work))
        for (msg, command), result in zip(work, results, strict=True):
            if not self._owned(msg):  # handled, but moved meanwhile: the next owner answers it (identically)
                continue
            kind = type(command).__name__
            if isinstance(result, Rejected):
                self.metrics.commands.labels(type=kind, outcome="refused").inc()
                self._dead_letter(msg, f"refused by the database: {result}", "refused-by-database")
                continue
            outcome = "failed" if result.reason is not None else "confirmed"
            self.metrics.commands.labels(type=kind, outcome=outcome).inc()
            self._send(msg, command, result)
        self.metrics.batch_seconds.observe(time.monotonic() - started)

    def _send(self, msg: Message, command: Command, outcome: Outcome) -> None:
        messages = self._until_available(lambda: self.codec.encode(msg.key(), outcome), "encoding")
        if messages is None:  # stopping
            self.tracker.abandon(*origin(msg))
            return
        if log.isEnabledFor(logging.DEBUG):  # never the token or the account's IBAN: what happened, not the secrets
            log.debug(
                "%s %s at %s/%d@%d -> %s%s, %d events",
                type(command).__name__,
                command.id,
                msg.topic(),
                msg.partition(),
                msg.offset(),
                type(outcome.feedback).__name__,
                f" ({outcome.reason})" if outcome.reason else "",
                len(outcome.events),
            )
        self._queue(messages, msg)

    def _queue(self, messages: list[OutMessage], msg: Message) -> None:
        assert self.producer is not None
        token = origin(msg)
        self._in_flight[token] = (time.monotonic(), msg)
        if not self.producer.send(messages, token, self.stopping):  # stopping: it stays uncommitted
            self._in_flight.pop(token, None)
            self.tracker.abandon(*token)

    def _dead_letter(self, msg: Message, reason: str, kind: str) -> None:
        self._queue([self._set_aside(msg, reason, kind)], msg)

    def _set_aside(self, msg: Message, reason: str, kind: str) -> OutMessage:
        """The dead letter of ``msg``, logged and counted (``kind``: the metric's reason label)."""
        self.stats.dead_lettered += 1
        self.metrics.dead_letters.labels(reason=kind).inc()
        (topic, partition), offset = origin(msg)
        log.error("set aside %s/%d@%d to %s: %s", topic, partition, offset, self.dead_letter_topic, reason)
        return dead_letter(self.dead_letter_topic, msg, reason)

    def _until_available(self, attempt: Callable[[], T], what: str) -> T | None:
        """Run ``attempt``, retrying with backoff while the registry or database is away; None if stopping.
        Meanwhile the handler reports not-ready, saying what it waits for, commits what was acknowledged, and
        stays in its group: the partitions are paused and the consumer polled (see ``_wait_in_group``)."""
        delay = 0.1
        waited = False
        try:
            while True:
                try:
                    return attempt()
                except (Unavailable, Conflict) as err:
                    waited = True
                    self.health.ready = False
                    self.health.reason = f"{what}: waiting ({type(err).__name__}: {str(err)[:200]})"
                    if what == "database":
                        self.metrics.db_retries.labels(kind=type(err).__name__.lower()).inc()
                    log.warning("%s: %s; retrying in %.1fs", what, err, delay)
                    if not self._wait_in_group(delay):
                        return None
                    delay = min(delay * 2, 5.0)
                    self.health.beat()
                    self._commit()  # what was acknowledged meanwhile
        finally:  # answered, poison, or stopping: the partitions go on
            self._resume()
            if waited and not self.stopping.is_set():
                log.info("%s: waited for, going on", what)
                self.health.ready = True
                self.health.reason = f"consuming {len(self._assigned)} partitions"

    def _wait_in_group(self, seconds: float) -> bool:
        """Wait ``seconds`` without leaving the consumer group (False if stopping meanwhile): the assigned
        partitions are paused and the consumer is polled, which keeps max.poll.interval.ms met and serves
        rebalances. A record that arrives anyway (from a partition assigned meanwhile, before it could be
        paused) is put back with a seek."""
        deadline = time.monotonic() + seconds
        self._pause()
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            msg = self.consumer.poll(min(left, 0.2))
            if msg is not None and msg.error() is None:
                (topic, partition), offset = origin(msg)
                self.consumer.seek(TopicPartition(topic, partition, offset))
                self.consumer.pause(self.consumer.assignment())
        return False

    def _pause(self) -> None:
        if not self._paused:
            self.consumer.pause(self.consumer.assignment())
            self._paused = True

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self.consumer.resume(self.consumer.assignment())

    def _commit(self, sync: bool = False, partitions: set[TopicPartitionKey] | None = None) -> None:
        ready = self.tracker.committable(partitions)
        if not ready:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in ready.items()]
        try:
            if sync:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as err:
            log.warning("commit of %d partitions failed (they will be handled again): %s", len(offsets), err)

    def _shutdown(self) -> None:
        self.health.ready = False
        self.health.reason = "stopping"
        if self.fatal is None and not self.tracker.wait_all_done(SHUTDOWN_WAIT_S):
            log.warning("outputs still in flight at shutdown: their commands will be handled again")
        self._commit(sync=True)
        self._closing = True
        self._stop_output()
        self.consumer.close()
        log.info("stopped (%s)", self.stats.line(self.tracker.in_flight(), 0))

    def _stop_output(self) -> None:
        assert self.producer is not None
        self.producer.stop()


class TransactionalHandlerLoop(HandlerLoop):
    """``KAFKA_TRANSACTIONS=true``: a batch's outputs and its consumed offsets are written in one Kafka
    transaction, at the end of the batch, by the consumer thread itself (no producer thread, no offsets
    in flight). A failed transaction is aborted and retried with the same outputs (its outcomes are
    stored); a rebalance meanwhile drops the outputs of the partitions taken away; a fenced producer
    stops the handler without committing."""

    def __init__(self, parts: HandlerParts, health: Health) -> None:
        assert parts.make_transactional is not None
        self.output = parts.make_transactional()
        self._outputs: list[tuple[list[OutMessage], Message]] = []
        super().__init__(parts, health)

    def _make_producer(self, parts: HandlerParts) -> ProducerThread | None:
        return None

    def _start_output(self) -> None:
        pass

    def _stop_output(self) -> None:
        self.output.close()

    def _queue(self, messages: list[OutMessage], msg: Message) -> None:
        self._outputs.append((messages, msg))

    def _commit(self, sync: bool = False, partitions: set[TopicPartitionKey] | None = None) -> None:
        pass  # offsets are committed by the transactions

    def _release(self, tps: set[TopicPartitionKey]) -> None:
        self._outputs = [(out, msg) for out, msg in self._outputs if origin(msg)[0] not in tps]
        super()._release(tps)

    def _process(self, messages: list[Message]) -> None:
        self._outputs = []
        super()._process(messages)
        if not self.stopping.is_set():
            self._transact(messages)
        self._outputs = []
        # nothing stays in flight between batches: the offsets went with the transaction (or come back)
        self.tracker.forget({origin(m)[0] for m in messages if m.error() is None})

    def _transact(self, messages: list[Message]) -> None:
        """Commit the batch's transaction, waiting like any other dependency while Kafka cannot take it."""
        started = time.monotonic()
        try:
            committed = self._until_available(lambda: self._commit_transaction(messages), "kafka transaction")
        except Fenced as err:
            self.fatal = f"the transactional producer cannot go on: {err}"
            log.error("%s; stopping without committing the batch", self.fatal)
            self.stopping.set()
            return
        if committed:  # else stopping: nothing of the batch committed, it comes back
            self.metrics.delivery_seconds.observe(time.monotonic() - started)

    def _commit_transaction(self, messages: list[Message]) -> bool:
        """One attempt: the outputs and next offsets of the records still owned (a wait before this attempt
        may have moved partitions). An output refused before sending is replaced by its command's dead letter."""
        while True:
            next_offsets: dict[TopicPartitionKey, int] = {}
            for m in messages:
                if m.error() is None and self._owned(m):
                    tp, offset = origin(m)
                    next_offsets[tp] = max(next_offsets.get(tp, 0), offset + 1)
            offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
            try:
                self.output.commit([out for out, _ in self._outputs], offsets, self.consumer.consumer_group_metadata())
                return True
            except OutputRefused as refused:
                msg = self._outputs[refused.index][1]
                reason = f"an answer to this record cannot be written: {refused}"
                self._outputs[refused.index] = ([self._set_aside(msg, reason, "output-refused")], msg)


def handler_loop(parts: HandlerParts, health: Health) -> HandlerLoop:
    """The consumer loop the settings ask for: transactional outputs or the producer thread's."""
    return TransactionalHandlerLoop(parts, health) if parts.make_transactional else HandlerLoop(parts, health)


def origin(msg: Message) -> tuple[TopicPartitionKey, int]:
    """Where a consumed message came from: ((topic, partition), offset)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return (topic, partition), offset
