"""Topic administration through confluent_kafka's AdminClient."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from command_handler.config import KafkaSettings
from command_handler.retry import retry


class KafkaAdmin:
    def __init__(self, settings: KafkaSettings, request_timeout_s: float = 10.0) -> None:
        conf: dict[str, Any] = {**settings.common(), "socket.connection.setup.timeout.ms": 5000}
        self._client = AdminClient(conf, logger=logging.getLogger("librdkafka.admin"))
        self._brokers = settings.brokers
        self._timeout = request_timeout_s

    def wait_ready(self, timeout_s: float) -> int:
        """Wait until the cluster answers a metadata request; return the number of brokers. Each try is
        short: a SIGTERM during the wait is acted on once the call returns."""
        return retry(lambda: self.broker_count(timeout_s=3.0), f"Kafka at {self._brokers}", timeout_s)

    def broker_count(self, timeout_s: float | None = None) -> int:
        metadata = self._client.list_topics(timeout=timeout_s or self._timeout)
        if not metadata.brokers:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "no brokers in metadata"))
        return len(metadata.brokers)

    def topics(self) -> dict[str, int]:
        """Topic name -> partition count, internal topics left out."""
        metadata = self._client.list_topics(timeout=self._timeout)
        return {name: len(t.partitions) for name, t in metadata.topics.items() if not name.startswith("__")}

    def wait_listed(self, names: list[str], timeout_s: float = 30) -> None:
        """Wait until the metadata lists every topic of ``names``: a broker lists a new topic a moment after
        creating it, and a consumer that checks for its topics must see them."""

        def listed() -> None:
            missing = sorted(set(names) - set(self.topics()))
            if missing:
                raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"not listed yet: {missing}"))

        retry(listed, f"new topics at {self._brokers}", timeout_s)

    def create_topic(self, name: str, partitions: int, replication: int, config: dict[str, str]) -> bool:
        """Create a topic; False when it already existed."""
        future = self._client.create_topics(
            [NewTopic(name, partitions, replication, config=config)], request_timeout=self._timeout
        )[name]
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return False
            raise
        return True

    def delete_topic(self, name: str) -> None:
        self._client.delete_topics([name], request_timeout=self._timeout)[name].result()
