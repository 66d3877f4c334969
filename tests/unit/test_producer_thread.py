"""The producer thread against a broker that never answers: a full queue does not keep the handler
from stopping."""

import threading

from command_handler.adapters.avro_codec import OutMessage
from command_handler.adapters.kafka_producer import ProducerThread
from open_bank_devtools.health import free_port


def test_send_gives_up_when_stopping_while_the_queue_is_full() -> None:
    dead_broker = f"127.0.0.1:{free_port()}"  # nothing listens: nothing is ever acknowledged
    conf = {"bootstrap.servers": dead_broker, "message.timeout.ms": 60_000, "queue.buffering.max.messages": 1}
    producer = ProducerThread(conf, lambda token: None, lambda token, err: None, queue_size=1)
    producer.start()
    stopping = threading.Event()
    message = [OutMessage("t", b"k", b"v")]
    try:
        # fill librdkafka's queue and ours; then the next send blocks
        sent = [producer.send(message, n, stopping) for n in range(3)]
        assert all(sent)
        blocked: list[bool] = []
        thread = threading.Thread(target=lambda: blocked.append(producer.send(message, "last", stopping)))
        thread.start()
        thread.join(1)
        assert thread.is_alive(), "the queue is full: send waits"
        stopping.set()
        thread.join(5)
        assert not thread.is_alive() and blocked == [False]  # it gave up without queuing
    finally:
        stopping.set()
        producer.stop(timeout_s=2)
