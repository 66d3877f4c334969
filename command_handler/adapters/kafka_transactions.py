"""Transactional outputs (``KAFKA_TRANSACTIONS=true``): a batch's deliveries and its next offsets in one
Kafka transaction, written by the consumer thread itself.

``send`` begins a transaction, produces every message of the batch, adds the batch's next offsets for
the consumer group (with the group's metadata, so a member the group has moved on from is fenced,
KIP-447) and commits. A reader with ``isolation.level=read_committed`` sees each batch's outputs once:
a transaction that fails is aborted and its outputs never become visible, and the batch's stored
outcomes make the retry identical.

* A ``commit_transaction`` that timed out is called again (librdkafka goes on committing in the
  background; aborting could undo a commit that went through, and a new transaction would write the
  batch twice).
* A message refused for what it is (too large) is replaced through the pipeline's ``replacement``, once
  per stage, and the replacement kept for the retries; with nothing to replace it the output is fatal.
* A librdkafka call that hangs past its time-out (librdkafka #5456) gets its producer replaced; a
  producer whose transactions failed for ``STUCK_AFTER_S`` in a row too.
* ``stopping`` ends every wait within a fraction of a second (nothing of the batch is committed then,
  or it was committed whole).

Errors are translated: ``Unavailable`` (again later; also after a fatal librdkafka error, which replaces
the producer: its transactional.id is this process's own, so nothing else fences it), ``OutputRefused``
(fatal: an output that nothing can replace).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from command_handler.adapters.kafka_producer import REFUSED_FOR_SIZE, Replacement, produce_waiting
from command_handler.domain.model import OutMessage, PartitionId, Source
from command_handler.errors import Fenced, OutputRefused, Unavailable
from command_handler.service_layer.delivery import Delivery
from command_handler.service_layer.ports import Telemetry

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
# An open transaction of a producer that died holds read_committed readers back until the broker
# aborts it after this long: kept short (librdkafka's default is 60 s).
TRANSACTION_TIMEOUT_MS = 10_000
STUCK_AFTER_S = 30.0  # transactions failing this long in a row: the producer is replaced


def transactional_conf(producer_conf: dict[str, Any], group_id: str) -> dict[str, Any]:
    return {
        **producer_conf,
        # one id per process: fencing across a rebalance comes from the group metadata (KIP-447)
        "transactional.id": f"{group_id}-{uuid.uuid4()}",
        "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
    }


class _Refusal(Exception):
    def __init__(self, index: int, error: KafkaError) -> None:
        super().__init__(error.str())
        self.index = index
        self.error = error


class TransactionalOutput:
    def __init__(
        self,
        conf: dict[str, Any],
        replacement: Replacement,
        telemetry: Telemetry,
        stopping: threading.Event,
        make_producer: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self._conf = conf
        self._make = make_producer or (lambda c: Producer(c, logger=logging.getLogger("librdkafka.producer")))
        self._replacement = replacement
        self._telemetry = telemetry
        self._stopping = stopping
        self._producer = self._make(conf)
        self._initialised = False
        self._needs_abort = False  # an abort timed out: librdkafka wants it called again before anything else
        self._commit_pending = False  # a commit timed out: it is called again before anything else
        self._failing_since: float | None = None  # when the transactions started failing, if they do
        self._replaced: dict[Source, Delivery] = {}  # the batch's deliveries replaced so far, kept for retries
        # producers replaced while a call of theirs hung (kept referenced until the call returns)
        self._stuck: list[tuple[Any, threading.Event]] = []

    # -- the port -------------------------------------------------------------------------------------

    def start(self) -> None:
        pass

    def send(self, deliveries: Sequence[Delivery], group_metadata: Callable[[], object]) -> Sequence[Delivery]:
        if not deliveries:
            return ()
        started = time.monotonic()
        try:
            self._send(deliveries, group_metadata)
        except Fenced as err:
            # The transactional.id is this process's own (a uuid): no other live producer fences it, so a fatal
            # error means this producer's state is lost (seen after a freeze: messages timed out, then the broker
            # refused to end the transaction, INVALID_TXN_STATE). A fatal error is the broker's refusal, never a
            # commit that may have gone through (those time out, retriable, and are called again), so nothing of
            # the batch was committed: a new producer with the same id fences this one and aborts its open
            # transaction, and the batch goes again whole.
            self._replace(f"the transactional producer failed for good ({err})")
            raise Unavailable(f"transaction: {err}; the producer was replaced") from err
        except Unavailable:
            now = time.monotonic()
            self._failing_since = self._failing_since or now
            if now - self._failing_since >= STUCK_AFTER_S:
                self._replace(f"transactions failed for {now - self._failing_since:.0f}s in a row")
            raise
        self._failing_since = None
        self._replaced = {}
        self._telemetry.delivered(time.monotonic() - started)
        return ()

    def committable(self) -> dict[PartitionId, int]:
        return {}  # the transactions commit the offsets

    def release(self, partitions: set[PartitionId]) -> None:
        self._replaced = {s: d for s, d in self._replaced.items() if s.partition_id not in partitions}

    def drain(self, partitions: set[PartitionId] | None, timeout_s: float, stopping: threading.Event) -> bool:
        return True  # nothing stays in flight between batches

    def in_flight(self) -> int:
        return 0

    def oldest_wait_s(self) -> float:
        return 0.0

    def queued(self) -> int:
        return 0

    def fatal(self) -> str | None:
        return None  # raised from send instead

    def close(self, timeout_s: float) -> None:
        try:
            self._producer.flush(timeout_s)
        except KafkaException as err:  # a producer failed for good has nothing left to flush
            log.warning("closing the transactional producer: %s", err.args[0].str())

    # -- one attempt ----------------------------------------------------------------------------------

    def _send(self, deliveries: Sequence[Delivery], group_metadata: Callable[[], object]) -> None:
        self._init()
        if self._commit_pending:
            self._commit()  # the batch's transaction, still being committed
            return
        if self._needs_abort:
            self._abort()
            if self._needs_abort:
                raise Unavailable("the last transaction is still being aborted")
        batch = [self._replaced.get(d.record.source, d) for d in deliveries]
        offsets: dict[PartitionId, int] = {}
        for d in batch:
            source = d.record.source
            offsets[source.partition_id] = max(offsets.get(source.partition_id, 0), source.offset + 1)
        refused: list[_Refusal] = []  # filled by delivery reports while the commit flushes
        try:
            self._call(self._producer.begin_transaction)
            self._produce(batch, refused)
            try:
                self._send_offsets([TopicPartition(t, p, o) for (t, p), o in offsets.items()], group_metadata())
                self._commit()
            except Unavailable:
                if refused:  # the broker refused a message: the transaction was aborted for it
                    self._replace_refused(batch[refused[0].index], refused[0].error)
                raise
        except _Refusal as refusal:
            self._abort()
            self._replace_refused(batch[refusal.index], refusal.error)
            raise Unavailable(
                f"an output was refused ({refusal.error.str()}): the batch goes again with its replacement"
            ) from None

    def _replace_refused(self, delivery: Delivery, error: KafkaError) -> None:
        instead = self._replacement(delivery, error.str())
        if instead is None:
            raise OutputRefused(0, f"an output of {delivery.record.source} cannot be written: {error.str()}")
        self._replaced[delivery.record.source] = instead

    def _produce(self, batch: Sequence[Delivery], refused: list[_Refusal]) -> None:
        """Produce the batch's messages; raises ``_Refusal`` for one refused before sending, and notes in
        ``refused`` one the broker refuses for what it is."""
        for index, delivery in enumerate(batch):

            def delivered(err: KafkaError | None, msg: Message, index: int = index) -> None:
                if err is not None and err.code() in REFUSED_FOR_SIZE and not refused:
                    refused.append(_Refusal(index, err))

            for m in delivery.messages:
                self._produce_one(m, delivered, index)
        self._producer.poll(0)

    def _produce_one(self, message: OutMessage, delivered: Callable[..., None], index: int) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        try:
            taken = produce_waiting(
                self._producer, message, delivered, lambda: time.monotonic() > deadline or self._stopping.is_set()
            )
        except KafkaException as err:
            error: KafkaError = err.args[0]
            if error.fatal():
                raise Fenced(error.str()) from err
            if error.retriable() or error.txn_requires_abort():
                self._abort()
                raise Unavailable(error.str()) from err
            raise _Refusal(index, error) from err
        if not taken:  # librdkafka's queue stayed full: given up, the batch is retried
            self._abort()
            raise Unavailable("the transactional producer's queue stayed full")

    def _send_offsets(self, offsets: list[TopicPartition], metadata: object) -> None:
        """The batch's next offsets into the transaction. The group refusing them (a member it has moved on
        from: UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION after a freeze, a rebalance meanwhile) makes the
        transaction abortable: it is aborted and the batch retried, without the partitions the rebalance
        took (the loop filters them); only a fatal error fences the producer."""
        try:
            self._bounded(self._producer.send_offsets_to_transaction, offsets, metadata, TIMEOUT_S)
        except KafkaException as err:
            error: KafkaError = err.args[0]
            if error.fatal():
                raise Fenced(error.str()) from err
            self._abort()
            raise Unavailable(f"the group refused the batch's offsets: {error.str()}") from err

    def _commit(self) -> None:
        try:
            self._bounded(self._producer.commit_transaction, TIMEOUT_S)
        except KafkaException as err:
            error: KafkaError = err.args[0]
            if error.fatal():
                raise Fenced(error.str()) from err
            if error.retriable() and not error.txn_requires_abort():
                self._commit_pending = True  # librdkafka: call commit_transaction again
                raise Unavailable(f"committing the transaction: {error.str()} (it is called again)") from err
            self._commit_pending = False
            self._abort()
            raise Unavailable(f"transaction: {error.str()}") from err
        self._commit_pending = False

    # -- the producer's own state -----------------------------------------------------------------------

    def _init(self) -> None:
        if not self._initialised:
            self._call(self._producer.init_transactions, TIMEOUT_S)
            self._initialised = True

    def _call(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except KafkaException as err:
            error: KafkaError = err.args[0]
            if error.fatal():
                raise Fenced(error.str()) from err
            raise Unavailable(f"transaction: {error.str()}") from err

    def _abort(self) -> None:
        try:
            self._bounded(self._producer.abort_transaction, TIMEOUT_S)
            self._needs_abort = False
        except Unavailable:  # the call hung and the producer was replaced, or stopping: nothing to abort here
            pass
        except KafkaException as err:
            if err.args[0].fatal():
                raise Fenced(err.args[0].str()) from err
            self._needs_abort = True  # librdkafka: "retry call to resume"
            log.warning("aborting the transaction failed (it is tried again first): %s", err)

    def _replace(self, why: str, running: threading.Event | None = None) -> None:
        """A new producer with the same transactional.id: its initialisation fences the old one and aborts
        the old one's open transaction, whatever state that one is stuck in."""
        log.error("%s: replacing the transactional producer", why)
        done = running or threading.Event()
        if running is None:
            done.set()
        self._stuck = [(p, d) for p, d in self._stuck if not d.is_set()] + [(self._producer, done)]
        self._producer = self._make(self._conf)
        self._initialised = False
        self._needs_abort = False
        self._commit_pending = False

    def _bounded(self, call: Callable[..., None], *args: Any) -> None:
        """``call(*args)`` on a helper thread, waited for up to its own timeout plus 5 s, or until stopping.
        librdkafka's send_offsets_to_transaction can ignore its timeout and block for ever once the group
        coordinator went away (a broker restart; librdkafka issue #5456): then the producer is replaced and
        the batch is retried (``Unavailable``)."""
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
        deadline = time.monotonic() + TIMEOUT_S + 5
        while not done.wait(0.1):
            if self._stopping.is_set():
                raise Unavailable("stopping during a transaction call")
            if time.monotonic() > deadline:
                self._replace("a transaction call hung past its timeout (librdkafka #5456)", running=done)
                raise Unavailable("a Kafka transaction call hung; the producer was replaced")
        if failure:
            raise failure[0]
