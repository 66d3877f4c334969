"""Acknowledged outputs: the one producer, owned by one thread and fed by a bounded queue, and the only
registry of what is in flight and what may be committed.

``send`` registers each delivery at its record's position and queues it (never blocking: what does not
fit is handed back, and the loop waits in its group). The producer thread produces a delivery's
messages; once the broker acknowledged all of them the position is done, and ``committable`` gives per
partition the next offset before which everything is done. Messages wait in the producer while the
broker is away (``message.timeout.ms=0``: no delivery time-out, so an outage never ends in a crash loop).

A message the producer refuses (before sending, or the broker for its size) is never produced again
unchanged: the pipeline's ``replacement`` says what to write instead under the same position, and when
there is nothing (a dead letter was refused) the output is fatal: the handler stops without committing.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from command_handler.domain.model import OutMessage, PartitionId
from command_handler.service_layer.delivery import Delivery
from command_handler.service_layer.ports import Telemetry

log = logging.getLogger(__name__)

Replacement = Callable[[Delivery, str], Delivery | None]

# deliveries the producer thread takes from its queue before it serves delivery reports (at most this many
# are out of the queue and not yet produced: ``queued`` does not count them)
DRAIN_AT_ONCE = 100
# the broker refused a message for good because of what it is: written differently instead
REFUSED_FOR_SIZE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE}


def acknowledged_conf(producer_conf: dict[str, Any]) -> dict[str, Any]:
    """No delivery time-out: while the broker is away, outputs wait in the producer (the loop waits in its
    group and reports not-ready), rather than failing after librdkafka's default of 300 s."""
    return {**producer_conf, "message.timeout.ms": 0}


def produce_waiting(
    producer: Any, message: OutMessage, on_delivery: Callable[..., None], give_up: Callable[[], bool]
) -> bool:
    """Produce ``message``, serving delivery reports while librdkafka's own queue is full; False when
    ``give_up`` says so first. Raises ``KafkaException`` for a message refused before sending. The one
    produce loop of both output adapters."""
    while True:
        try:
            if message.headers:
                producer.produce(
                    message.topic, message.value, message.key, headers=list(message.headers), on_delivery=on_delivery
                )
            else:  # most outputs: no header list to build and convert
                producer.produce(message.topic, message.value, message.key, on_delivery=on_delivery)
            return True
        except BufferError:
            if give_up():
                return False
            producer.poll(0.05)


class _Entry:
    """One delivery in flight at its record's position; ``attempt`` counts its replacements."""

    __slots__ = ("attempt", "delivery", "done", "queued_at")

    def __init__(self, delivery: Delivery, queued_at: float) -> None:
        self.delivery = delivery
        self.queued_at = queued_at
        self.done = False
        self.attempt = 0


class AcknowledgedOutput:
    def __init__(
        self,
        conf: dict[str, Any],
        replacement: Replacement,
        telemetry: Telemetry,
        queue_size: int = 10_000,
        producer: Any = None,
    ) -> None:
        self._producer = producer or Producer(conf, logger=logging.getLogger("librdkafka.producer"))
        self._replacement = replacement
        self._telemetry = telemetry
        self._queue: queue.Queue[_Entry] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: dict[PartitionId, OrderedDict[int, _Entry]] = {}
        self._fatal: str | None = None
        self._closing = threading.Event()
        self._close_by = 0.0
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    # -- the port, on the consumer thread -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def send(self, deliveries: Sequence[Delivery], group_metadata: Callable[[], object]) -> Sequence[Delivery]:
        now = time.monotonic()
        for index, delivery in enumerate(deliveries):
            source = delivery.record.source
            entry = _Entry(delivery, now)
            with self._lock:
                self._pending.setdefault(source.partition_id, OrderedDict())[source.offset] = entry
            try:
                self._queue.put_nowait(entry)
            except queue.Full:
                with self._lock:
                    self._pending[source.partition_id].pop(source.offset, None)
                return deliveries[index:]
        return ()

    def committable(self) -> dict[PartitionId, int]:
        result = {}
        with self._lock:
            for tp, pending in self._pending.items():
                last = None
                while pending:
                    offset, entry = next(iter(pending.items()))
                    if not entry.done:
                        break
                    pending.popitem(last=False)
                    last = offset
                if last is not None:
                    result[tp] = last + 1
        return result

    def release(self, partitions: set[PartitionId]) -> None:
        with self._lock:
            for tp in partitions:
                self._pending.pop(tp, None)
            self._changed.notify_all()

    def _busy(self, partitions: set[PartitionId] | None) -> bool:
        return any(
            not entry.done
            for tp, pending in self._pending.items()
            if partitions is None or tp in partitions
            for entry in pending.values()
        )

    def drain(self, partitions: set[PartitionId] | None, timeout_s: float, stopping: threading.Event) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._busy(partitions):
                left = deadline - time.monotonic()
                if left <= 0 or stopping.is_set() or self._fatal is not None or not self._thread.is_alive():
                    return False
                self._changed.wait(min(left, 0.1))
        return True

    def in_flight(self) -> int:
        with self._lock:
            return sum(1 for pending in self._pending.values() for entry in pending.values() if not entry.done)

    def oldest_wait_s(self) -> float:
        now = time.monotonic()
        oldest = now
        with self._lock:
            for pending in self._pending.values():
                for entry in pending.values():  # in the order queued: the first not done is the oldest
                    if not entry.done:
                        oldest = min(oldest, entry.queued_at)
                        break
        return now - oldest

    def queued(self) -> int:
        """Deliveries waiting in the queue (not those the producer thread took and is producing)."""
        return self._queue.qsize()

    def fatal(self) -> str | None:
        return self._fatal

    def close(self, timeout_s: float) -> None:
        """Produce what is queued, wait up to ``timeout_s`` for the broker's acknowledgements, stop."""
        self._close_by = time.monotonic() + timeout_s
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s + 0.5)

    # -- the producer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                try:
                    entry = self._queue.get(timeout=0.02)
                except queue.Empty:
                    self._producer.poll(0)
                    if self._closing.is_set():
                        break
                    continue
                # what else is queued goes out with it, and the delivery reports are served once for all of
                # them: a poll per delivery cost this thread more CPU than its produce calls
                entries = [entry]
                with contextlib.suppress(queue.Empty):
                    while len(entries) < DRAIN_AT_ONCE:
                        entries.append(self._queue.get_nowait())
                for entry in entries:
                    self._produce(entry)
                self._producer.poll(0)
            left = self._producer.flush(max(self._close_by - time.monotonic(), 0))
            if left:
                log.warning("%d messages were not acknowledged by the broker at shutdown", left)
        except Exception as err:  # never die silently: the handler must stop, not hang
            log.exception("producer thread failed")
            self._fatal = f"the producer thread failed: {err}"
        finally:
            with self._changed:
                self._changed.notify_all()

    def _produce(self, entry: _Entry) -> None:
        attempt = entry.attempt
        remaining = [len(entry.delivery.messages)]

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if entry.attempt != attempt:
                return  # a message of a delivery since replaced
            if err is not None:
                if err.code() in REFUSED_FOR_SIZE:
                    self._refused(entry, err)
                else:
                    self._failed(entry, err)
                return
            remaining[0] -= 1
            if remaining[0] == 0:
                self._done(entry)

        for m in entry.delivery.messages:
            try:
                if not produce_waiting(self._producer, m, delivered, self._past_closing):
                    return  # stopping: never acknowledged, so never committed
            except KafkaException as err:  # refused before sending (too large)
                self._refused(entry, err.args[0])
                return
            if entry.attempt != attempt:
                return

    def _past_closing(self) -> bool:
        return self._closing.is_set() and time.monotonic() > self._close_by

    def _refused(self, entry: _Entry, err: KafkaError) -> None:
        entry.attempt += 1  # what of it is still in flight no longer counts
        instead = self._replacement(entry.delivery, err.str())
        if instead is None:
            self._failed(entry, err)
            return
        entry.delivery = instead
        self._produce(entry)

    def _failed(self, entry: _Entry, err: KafkaError) -> None:
        if self._fatal is None:
            self._fatal = f"the broker did not accept an output of {entry.delivery.record.source}: {err.str()}"
        with self._changed:
            self._changed.notify_all()

    def _done(self, entry: _Entry) -> None:
        source = entry.delivery.record.source
        with self._changed:
            pending = self._pending.get(source.partition_id)
            if pending is None or pending.get(source.offset) is not entry:
                return  # released meanwhile: the next owner's
            entry.done = True
            self._changed.notify_all()
        self._telemetry.delivered(time.monotonic() - entry.queued_at)
