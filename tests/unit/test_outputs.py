"""The two output adapters' rules, on fake librdkafka producers: what is committable, refused outputs
(replaced, never written unchanged again), late acknowledgements of released partitions, a timed-out
transaction commit called again, and every wait ending when stopping. Plus the dead letter's budget."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from command_handler.adapters.kafka_producer import AcknowledgedOutput
from command_handler.adapters.kafka_transactions import TransactionalOutput
from command_handler.domain.model import OutMessage
from command_handler.errors import OutputRefused, Unavailable
from command_handler.service_layer.commands import CommandService
from command_handler.service_layer.delivery import Delivery, Pipeline

from .loop_fakes import TOPIC, Clock, FakeCodec, Telemetry, record
from .memory_ledger import InMemoryBank

LIMIT = 20_000  # the fake producers' message size limit, and the pipeline's
A, B = (TOPIC, 0), (TOPIC, 1)


def too_large() -> KafkaException:
    return KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large"))


def size(topic: str, value: Any, key: Any, headers: Any) -> int:
    return len(key or b"") + len(value or b"") + sum(len(n) + len(v or b"") for n, v in headers or [])


class FakeProducer:
    """librdkafka's producer: refuses messages over ``LIMIT`` before sending; acknowledges on poll while
    ``broker_up``."""

    def __init__(self) -> None:
        self.broker_up = True
        self.produced: list[tuple[str, Any, Any]] = []
        self._pending: list[Callable[[KafkaError | None, Any], None]] = []
        self._lock = threading.Lock()

    def produce(self, topic: str, value: Any, key: Any, headers: Any = None, on_delivery: Any = None) -> None:
        if size(topic, value, key, headers) > LIMIT:
            raise too_large()
        with self._lock:
            self.produced.append((topic, key, value))
            self._pending.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        if not self.broker_up:
            time.sleep(min(timeout, 0.005))
            return 0
        with self._lock:
            pending, self._pending = self._pending, []
        for callback in pending:
            callback(None, None)
        return len(pending)

    def flush(self, timeout: float = 0) -> int:
        self.poll(0)
        return len(self._pending)


def pipeline() -> Pipeline:
    return Pipeline(FakeCodec(Clock()), CommandService(InMemoryBank().unit_of_work), "commands.dlq", Telemetry(), LIMIT)


def answer(partition: int, offset: int, key: bytes = b"alice", applied: bool = True) -> Delivery:
    r = record(partition, offset, b"create:x", key)
    return Delivery(r, [OutMessage("account_creation_feedback", key, b"confirmed")], applied=applied)


def eventually(condition: Callable[[], bool], within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def acknowledged(producer: FakeProducer, queue_size: int = 100) -> AcknowledgedOutput:
    return AcknowledgedOutput({}, pipeline().replacement, Telemetry(), queue_size=queue_size, producer=producer)


def test_the_acknowledged_prefix_of_each_partition_is_committable() -> None:
    producer = FakeProducer()
    producer.broker_up = False
    output = acknowledged(producer)
    output.start()
    try:
        assert output.send([answer(0, 0), answer(0, 1), answer(1, 0)], lambda: None) == ()
        assert eventually(lambda: len(producer.produced) == 3)
        assert output.committable() == {} and output.in_flight() == 3
        producer.broker_up = True
        assert eventually(lambda: output.in_flight() == 0)
        assert output.committable() == {A: 2, B: 1}
    finally:
        output.close(1)


def test_a_full_queue_hands_back_what_it_cannot_take() -> None:
    output = acknowledged(FakeProducer(), queue_size=1)  # not started: nothing leaves the queue
    rest = output.send([answer(0, 0), answer(0, 1), answer(0, 2)], lambda: None)
    assert [d.record.source.offset for d in rest] == [1, 2]
    assert output.in_flight() == 1  # only what was queued is registered


def test_a_refused_answer_is_written_with_its_key_cut_and_never_again_unchanged() -> None:
    producer = FakeProducer()
    output = acknowledged(producer)
    output.start()
    try:
        output.send([answer(0, 0, key=b"k" * 50_000)], lambda: None)
        assert eventually(lambda: output.committable() == {A: 1})
        [(topic, key, value)] = producer.produced
        assert topic == "account_creation_feedback" and value == b"confirmed"  # the answer itself, not a DLQ
        assert key == b"k" * len(key) and len(key) < LIMIT
        assert output.fatal() is None
    finally:
        output.close(1)


def test_an_unapplied_record_whose_output_is_refused_is_set_aside() -> None:
    producer = FakeProducer()
    output = acknowledged(producer)
    output.start()
    try:
        output.send([answer(0, 0, key=b"k" * 50_000, applied=False)], lambda: None)
        assert eventually(lambda: output.committable() == {A: 1})
        [(topic, key, _)] = producer.produced
        assert topic == "commands.dlq" and key is None
    finally:
        output.close(1)


def test_a_refused_dead_letter_stops_the_output_and_commits_nothing() -> None:
    producer = FakeProducer()
    output = acknowledged(producer)
    output.start()
    try:
        huge = Delivery(record(0, 0, b"x"), [OutMessage("commands.dlq", b"k" * 50_000, b"x")], dead_letter=True)
        output.send([huge], lambda: None)
        assert eventually(lambda: output.fatal() is not None)
        assert "commands/0@0" in (output.fatal() or "")
        assert producer.produced == [] and output.committable() == {}
    finally:
        output.close(1)


def test_late_acknowledgements_of_a_released_partition_commit_nothing() -> None:
    producer = FakeProducer()
    producer.broker_up = False
    output = acknowledged(producer)
    output.start()
    try:
        output.send([answer(0, 0), answer(1, 0)], lambda: None)
        assert eventually(lambda: len(producer.produced) == 2)
        output.release({A})  # lost while the handler was frozen: another handler owns it now
        producer.broker_up = True  # the zombie wakes, its old outputs are acknowledged
        assert eventually(lambda: output.in_flight() == 0)
        assert output.committable() == {B: 1}
    finally:
        output.close(1)


def test_draining_ends_when_stopping() -> None:
    producer = FakeProducer()
    producer.broker_up = False  # never acknowledged
    output = acknowledged(producer)
    output.start()
    stopping = threading.Event()
    try:
        output.send([answer(0, 0)], lambda: None)
        threading.Timer(0.1, stopping.set).start()
        assert output.drain(None, 3600, stopping) is False  # returns at the signal, not after an hour
    finally:
        output.close(0.1)


class FakeTransactionalProducer:
    """Records the calls; ``fail_commits`` commits time out first; ``hang`` makes commit_transaction block."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_commits = 0
        self.hang: threading.Event | None = None
        self.offsets: list[Any] = []
        self.keys: list[Any] = []
        self.refuse_offsets: KafkaError | None = None  # the group refuses the next offsets with it
        self.broker_limit: int | None = None  # the broker refuses larger messages (in their delivery reports)
        self._reports: list[Any] = []

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init")

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, topic: str, value: Any, key: Any, headers: Any = None, on_delivery: Any = None) -> None:
        if size(topic, value, key, headers) > LIMIT:
            raise too_large()
        self.calls.append("produce")
        self.keys.append(key)
        if self.broker_limit is not None and size(topic, value, key, headers) > self.broker_limit and on_delivery:
            self._reports.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        reports, self._reports = self._reports, []
        for report in reports:
            report(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large"), None)
        return len(reports)

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self.calls.append("offsets")
        if self.refuse_offsets is not None:
            error, self.refuse_offsets = self.refuse_offsets, None
            raise KafkaException(error)
        self.offsets.append({(o.topic, o.partition): o.offset for o in offsets})

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        if self.hang is not None:
            self.hang.wait()
        if self.fail_commits:
            self.fail_commits -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "commit timed out", retriable=True))

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")

    def flush(self, timeout: float) -> int:
        return 0


def transactional(producer: FakeTransactionalProducer, stopping: threading.Event | None = None) -> TransactionalOutput:
    return TransactionalOutput(
        {}, pipeline().replacement, Telemetry(), stopping or threading.Event(), make_producer=lambda conf: producer
    )


def test_a_batch_and_its_next_offsets_go_in_one_transaction() -> None:
    producer = FakeTransactionalProducer()
    output = transactional(producer)
    assert output.send([answer(0, 3), answer(0, 4), answer(1, 7)], lambda: "metadata") == ()
    assert producer.calls == ["init", "begin", "produce", "produce", "produce", "offsets", "commit"]
    assert producer.offsets == [{A: 5, B: 8}]


def test_a_timed_out_commit_is_called_again_not_aborted_nor_begun_anew() -> None:
    producer = FakeTransactionalProducer()
    producer.fail_commits = 1
    output = transactional(producer)
    batch = [answer(0, 0)]
    try:
        output.send(batch, lambda: "metadata")
        raise AssertionError("the first commit timed out")
    except Unavailable:
        pass
    assert output.send(batch, lambda: "metadata") == ()
    assert producer.calls == ["init", "begin", "produce", "offsets", "commit", "commit"]  # no abort, no 2nd batch


def test_offsets_refused_by_the_group_abort_the_transaction_and_the_batch_goes_again() -> None:
    # seen in the campaign: a handler woken after a freeze past its session timeout is no longer a member;
    # the group refuses its offsets (abortable, not fatal), and the handler must go on, not crash
    producer = FakeTransactionalProducer()
    producer.refuse_offsets = KafkaError(
        KafkaError.UNKNOWN_MEMBER_ID, "Broker: Unknown member", txn_requires_abort=True
    )
    output = transactional(producer)
    batch = [answer(0, 0)]
    try:
        output.send(batch, lambda: "metadata")
        raise AssertionError("the offsets were refused")
    except Unavailable as err:
        assert "Unknown member" in str(err)
    assert output.send(batch, lambda: "metadata") == ()
    assert producer.calls == ["init", "begin", "produce", "offsets", "abort", "begin", "produce", "offsets", "commit"]


def test_an_output_the_broker_refused_is_replaced_when_the_offsets_then_fail() -> None:
    # the broker refuses a message for its size (the transaction becomes abortable) and the offsets fail
    # before the commit: the retry must carry the replacement, never the refused message again
    producer = FakeTransactionalProducer()
    producer.broker_limit = 10_000
    producer.refuse_offsets = KafkaError(KafkaError._STATE, "transaction is abortable", txn_requires_abort=True)
    output = transactional(producer)
    batch = [answer(0, 0, key=b"k" * (LIMIT - 100))]  # the producer takes it, the broker does not
    try:
        output.send(batch, lambda: "metadata")
        raise AssertionError("the offsets were refused")
    except Unavailable:
        pass
    output.send(batch, lambda: "metadata")
    assert len(producer.keys) == 2 and len(producer.keys[1]) < len(producer.keys[0])  # the retry: key cut


def test_a_fatal_error_replaces_the_producer_and_the_batch_goes_again_whole() -> None:
    # the campaign's frozen handler: its transaction's messages timed out, then the broker refused to end the
    # transaction (INVALID_TXN_STATE, fatal); the handler used to stop, with a traceback from close()
    broken, fresh = FakeTransactionalProducer(), FakeTransactionalProducer()
    broken.refuse_offsets = KafkaError(KafkaError.INVALID_TXN_STATE, "invalid transaction state", fatal=True)
    made = iter([broken, fresh])
    output = TransactionalOutput(
        {}, pipeline().replacement, Telemetry(), threading.Event(), make_producer=lambda conf: next(made)
    )
    batch = [answer(0, 0), answer(0, 1)]
    try:
        output.send(batch, lambda: "metadata")
        raise AssertionError("a fatal error is retried with a new producer, not swallowed")
    except Unavailable:
        pass
    assert broken.offsets == [] and "commit" not in broken.calls  # nothing of it was committed
    assert output.send(batch, lambda: "metadata") == ()
    assert fresh.calls == ["init", "begin", "produce", "produce", "offsets", "commit"]
    assert fresh.offsets == [{("commands", 0): 2}]


def test_closing_a_producer_that_failed_for_good_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    producer = FakeTransactionalProducer()

    def failed_flush(timeout: float) -> int:
        raise KafkaException(KafkaError(KafkaError.INVALID_TXN_STATE, "invalid transaction state", fatal=True))

    producer.flush = failed_flush  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, "command_handler.adapters.kafka_transactions"):
        transactional(producer).close(2.0)
    assert "invalid transaction state" in caplog.text  # logged, not raised


def test_a_refused_output_is_replaced_and_the_transaction_retried_with_the_replacement() -> None:
    producer = FakeTransactionalProducer()
    output = transactional(producer)
    batch = [answer(0, 0, key=b"k" * 50_000)]
    try:
        output.send(batch, lambda: "metadata")
        raise AssertionError("the output was refused")
    except Unavailable:
        pass
    assert output.send(batch, lambda: "metadata") == ()  # the loop sends the same batch again
    assert producer.calls.count("abort") == 1 and producer.calls[-1] == "commit"
    assert len(producer.keys) == 1 and len(producer.keys[0]) < LIMIT  # written once, cut; never the refused one


def test_a_refused_dead_letter_in_a_transaction_is_fatal() -> None:
    producer = FakeTransactionalProducer()
    output = transactional(producer)
    huge = Delivery(record(0, 0, b"x"), [OutMessage("commands.dlq", b"k" * 50_000, b"x")], dead_letter=True)
    try:
        output.send([huge], lambda: "metadata")
        raise AssertionError("nothing can replace a dead letter")
    except OutputRefused as err:
        assert "commands/0@0" in str(err)


def test_stopping_ends_a_hung_transaction_call() -> None:
    producer = FakeTransactionalProducer()
    producer.hang = threading.Event()
    stopping = threading.Event()
    output = transactional(producer, stopping)
    threading.Timer(0.1, stopping.set).start()
    try:
        output.send([answer(0, 0)], lambda: "metadata")
        raise AssertionError("stopping must end the wait")
    except Unavailable as err:
        assert "stopping" in str(err)
    finally:
        producer.hang.set()


def test_a_dead_letter_always_fits_whatever_the_record_carries() -> None:
    p = pipeline()
    headers = [(f"h{n}", b"v" * 1_000) for n in range(40)]  # 40 kB of headers, more than the limit
    r = record(0, 9, b"x" * 15_000, key=b"k" * 3_000, headers=headers)
    message = p.dead_letter(r, "not Confluent-framed Avro " * 100)
    assert message.size() <= LIMIT
    found = dict(message.headers)
    assert found["dlq.offset"] == b"9" and found["dlq.topic"] == b"commands"
    assert len(found["dlq.error"] or b"") <= 1_000
    assert b"headers" in (found["dlq.omitted"] or b"")
    assert message.value == r.value  # the value is kept while it fits


def test_a_small_record_keeps_everything_in_its_dead_letter() -> None:
    r = record(0, 1, b"\x01\x02", key=b"alice", headers=[("trace", b"abc")])
    message = pipeline().dead_letter(r, "not Confluent-framed Avro")
    assert message.key == b"alice" and message.value == b"\x01\x02"
    assert message.headers[0] == ("trace", b"abc") and "dlq.omitted" not in dict(message.headers)
