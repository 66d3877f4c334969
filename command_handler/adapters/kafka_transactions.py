"""Exactly-once outputs (``KAFKA_TRANSACTIONS=true``): a batch's outputs and consumed offsets in one
Kafka transaction.

The consumer thread owns this producer. ``commit`` begins a transaction, produces
every output of the batch, adds the batch's next offsets for the consumer group
(with the group's metadata, so a member the group has moved on from is fenced,
KIP-447) and commits. A reader with ``isolation.level=read_committed`` sees each
batch's outputs once: a transaction that fails is aborted and its outputs never
become visible, and the batch's stored outcomes make the retry identical.

Errors are translated: ``OutputRefused`` (an output can never be written, e.g.
too large), ``Unavailable`` (aborted: retry later), ``Fenced`` (fatal: another
producer took over, or the producer's state is lost: stop).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from command_handler.adapters.avro_codec import OutMessage
from command_handler.errors import InfrastructureError, Unavailable

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
# An open transaction of a producer that died holds read_committed readers back until the broker
# aborts it after this long: kept short (librdkafka's default is 60 s).
TRANSACTION_TIMEOUT_MS = 10_000
STUCK_AFTER_S = 30.0  # transactions failing this long in a row: the producer is replaced


class Fenced(InfrastructureError):
    """The transactional producer can no longer be used (fenced by a newer one, or a fatal error)."""


class OutputRefused(InfrastructureError):
    """Output ``index`` of the batch was refused before sending and can never be written."""

    def __init__(self, index: int, error: KafkaError) -> None:
        super().__init__(error.str())
        self.index = index
        self.error = error


def transactional_conf(producer_conf: dict[str, Any], group_id: str) -> dict[str, Any]:
    return {
        **producer_conf,
        # one id per process: fencing across a rebalance comes from the group metadata (KIP-447)
        "transactional.id": f"{group_id}-{uuid.uuid4()}",
        "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
    }


class TransactionalOutput:
    def __init__(self, conf: dict[str, Any]) -> None:
        self._conf = conf
        self._producer = self._new_producer()
        self._initialised = False
        self._needs_abort = False  # an abort timed out: librdkafka wants it called again before anything else
        self._failing_since: float | None = None  # when the transactions started failing, if they do
        # producers replaced while a call of theirs hung (kept referenced until the call returns)
        self._stuck: list[tuple[Producer, threading.Event]] = []

    def _new_producer(self) -> Producer:
        return Producer(self._conf, logger=logging.getLogger("librdkafka.producer"))

    def _replace(self, why: str, running: threading.Event | None = None) -> None:
        """A new producer with the same transactional.id: its initialisation fences the old one and aborts
        the old one's open transaction, whatever state that one is stuck in."""
        log.error("%s: replacing the transactional producer", why)
        done = running or threading.Event()
        if running is None:
            done.set()
        self._stuck = [(p, d) for p, d in self._stuck if not d.is_set()] + [(self._producer, done)]
        self._producer = self._new_producer()
        self._initialised = False
        self._needs_abort = False
        self._failing_since = None

    def _bounded(self, call: Callable[..., None], *args: Any) -> None:
        """``call(*args)`` on a helper thread, given its own timeout plus 5 s. librdkafka's
        send_offsets_to_transaction can ignore its timeout and block for ever once the group coordinator
        went away (a broker restart; librdkafka issue #5456): then the producer is replaced and the batch
        is retried (``Unavailable``)."""
        done = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                call(*args)
            except BaseException as err:  # handed over to the caller's thread
                failure.append(err)
            finally:
                done.set()

        threading.Thread(target=run, name="kafka-transaction", daemon=True).start()
        if not done.wait(TIMEOUT_S + 5):
            self._replace("a transaction call hung past its timeout (librdkafka #5456)", running=done)
            raise Unavailable("a Kafka transaction call hung; the producer was replaced")
        if failure:
            raise failure[0]

    def _init(self) -> None:
        if not self._initialised:
            try:
                self._producer.init_transactions(TIMEOUT_S)
            except KafkaException as err:
                raise self._translate(err.args[0], abort=False) from err
            self._initialised = True

    def commit(
        self, outputs: Sequence[Sequence[OutMessage]], offsets: list[TopicPartition], group_metadata: Any
    ) -> None:
        """Write ``outputs`` (one list per command) and commit ``offsets`` for the group, atomically.
        When transactions have failed for ``STUCK_AFTER_S`` in a row, the producer is replaced (it may be
        stuck in a state it does not leave by itself)."""
        try:
            self._commit(outputs, offsets, group_metadata)
        except Unavailable:
            now = time.monotonic()
            self._failing_since = self._failing_since or now
            if now - self._failing_since >= STUCK_AFTER_S:
                self._replace(f"transactions failed for {now - self._failing_since:.0f}s in a row")
            raise
        self._failing_since = None

    def _commit(
        self, outputs: Sequence[Sequence[OutMessage]], offsets: list[TopicPartition], group_metadata: Any
    ) -> None:
        self._init()
        if self._needs_abort:
            self._abort()
            if self._needs_abort:
                raise Unavailable("the last transaction is still being aborted")
        try:
            self._producer.begin_transaction()
        except KafkaException as err:
            raise self._translate(err.args[0], abort=False) from err
        for index, messages in enumerate(outputs):
            for m in messages:
                try:
                    self._produce(m)
                except KafkaException as err:
                    error: KafkaError = err.args[0]
                    self._abort()
                    if error.fatal():
                        raise Fenced(error.str()) from err
                    if error.retriable() or error.txn_requires_abort():
                        raise Unavailable(error.str()) from err
                    raise OutputRefused(index, error) from err
        try:
            if offsets:
                self._bounded(self._producer.send_offsets_to_transaction, offsets, group_metadata, TIMEOUT_S)
            self._bounded(self._producer.commit_transaction, TIMEOUT_S)
        except KafkaException as err:
            raise self._translate(err.args[0], abort=True) from err

    def _produce(self, m: OutMessage) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                self._producer.produce(m.topic, m.value, m.key, headers=m.headers)
                return
            except BufferError:  # librdkafka's queue is full: let it send, then go on (or give up: retried)
                if time.monotonic() > deadline:
                    full = KafkaError(KafkaError._QUEUE_FULL, "producer queue full", retriable=True)
                    raise KafkaException(full) from None
                self._producer.poll(0.05)

    def _abort(self) -> None:
        try:
            self._bounded(self._producer.abort_transaction, TIMEOUT_S)
            self._needs_abort = False
        except Unavailable:  # the call hung and the producer was replaced: nothing left to abort
            pass
        except KafkaException as err:
            if err.args[0].fatal():
                raise Fenced(err.args[0].str()) from err
            self._needs_abort = True  # librdkafka: "retry call to resume"
            log.warning("aborting the transaction failed (it is tried again first): %s", err)

    def _translate(self, error: KafkaError, abort: bool) -> Exception:
        if error.fatal():
            return Fenced(error.str())
        if abort:
            self._abort()
        return Unavailable(f"transaction: {error.str()}")

    def close(self) -> None:
        self._producer.flush(TIMEOUT_S)
