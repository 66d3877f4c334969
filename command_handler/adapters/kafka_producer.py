"""The one producer, owned by one thread and fed by a bounded queue.

The consumer side puts each command's outputs on the queue as one item (and
blocks while the queue is full, so memory stays bounded). The producer thread
produces them and, once the broker has acknowledged every message of an item,
reports the item's token as delivered. A message the idempotent producer could
not deliver is fatal: the handler stops without committing its offset. A message
the producer refuses before sending it (too large: the command's own key made
it so) can never be written: ``on_refused`` may give messages to send instead
under the same token (the command's dead letter), else it is fatal too.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Hashable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from command_handler.adapters.avro_codec import OutMessage

log = logging.getLogger(__name__)

_STOP = object()


class ProducerThread(threading.Thread):
    def __init__(
        self,
        conf: dict[str, Any],
        on_delivered: Callable[[Hashable], None],
        on_failed: Callable[[Hashable, KafkaError], None],
        queue_size: int = 10_000,
        on_refused: Callable[[Hashable, KafkaError], list[OutMessage] | None] = lambda token, err: None,
    ) -> None:
        super().__init__(name="producer", daemon=True)
        self._producer = Producer(conf, logger=logging.getLogger("librdkafka.producer"))
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._on_delivered = on_delivered
        self._on_failed = on_failed
        self._on_refused = on_refused
        self._finished = threading.Event()

    def send(self, messages: list[OutMessage], token: Hashable, stopping: threading.Event | None = None) -> bool:
        """Queue one command's outputs; blocks while the queue is full (and the thread is alive). False,
        without queuing, when ``stopping`` is set meanwhile: the command is not acknowledged and comes back."""
        while not self._finished.is_set():
            if stopping is not None and stopping.is_set():
                return False
            try:
                self._queue.put((messages, token), timeout=0.2)
                return True
            except queue.Full:
                continue
        raise RuntimeError("the producer thread has stopped")

    def queued(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Produce what is queued, wait for the broker's acknowledgements, stop."""
        if not self._finished.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=timeout_s)
        self.join(timeout_s)

    def _produce(self, messages: list[OutMessage], token: Hashable, replacing: bool = False) -> None:
        remaining = [len(messages)]
        failed = [False]

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                if not failed[0]:
                    failed[0] = True
                    self._on_failed(token, err)
                return
            remaining[0] -= 1
            if remaining[0] == 0 and not failed[0]:
                self._on_delivered(token)

        for m in messages:
            while True:
                try:
                    self._producer.produce(m.topic, m.value, m.key, headers=m.headers, on_delivery=delivered)
                    break
                except BufferError:  # librdkafka's own queue is full: serve callbacks, then retry
                    self._producer.poll(0.05)
                except KafkaException as err:  # refused before sending (e.g. too large): never ack it
                    if failed[0]:
                        return
                    failed[0] = True
                    instead = None if replacing else self._on_refused(token, err.args[0])
                    if instead:
                        self._produce(instead, token, replacing=True)
                    else:
                        self._on_failed(token, err.args[0])
                    return

    def run(self) -> None:
        try:
            self._loop()
        except Exception as err:  # never die silently: the handler must stop, not hang
            log.exception("producer thread failed")
            self._on_failed("producer thread", KafkaError(KafkaError._FAIL, str(err)))
        finally:
            self._finished.set()

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.02)
            except queue.Empty:
                self._producer.poll(0)
                continue
            if item is _STOP:
                break
            self._produce(*item)
            self._producer.poll(0)
        remaining = self._producer.flush(30)
        if remaining:
            log.error("%d messages were not acknowledged by the broker at shutdown", remaining)
