"""Which consumed offsets may be committed: only those whose every output the broker acknowledged.

Commands of one partition may finish out of order (their outputs are acknowledged
independently), so per partition the tracker commits the longest prefix of
finished offsets. Thread-safe: the producer thread marks offsets done, the
consumer thread reads what is committable.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

TopicPartitionKey = tuple[str, int]


class OffsetTracker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: dict[TopicPartitionKey, OrderedDict[int, bool]] = {}

    def started(self, tp: TopicPartitionKey, offset: int) -> None:
        with self._lock:
            self._pending.setdefault(tp, OrderedDict())[offset] = False

    def done(self, tp: TopicPartitionKey, offset: int) -> None:
        with self._lock:
            pending = self._pending.get(tp)
            if pending is not None and offset in pending:
                pending[offset] = True
                self._changed.notify_all()

    def abandon(self, tp: TopicPartitionKey, offset: int) -> None:
        """``offset`` will not be finished (the handler is stopping): forget it and what follows it in its
        partition, so nothing past it is committed and nobody waits for it. It is consumed again later."""
        with self._lock:
            pending = self._pending.get(tp)
            if pending is None:
                return
            for later in [o for o in pending if o >= offset]:
                del pending[later]
            self._changed.notify_all()

    def committable(self, partitions: set[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Pop the finished prefix of each partition; return partition -> next offset to consume."""
        result = {}
        with self._lock:
            for tp, pending in self._pending.items():
                if partitions is not None and tp not in partitions:
                    continue
                last = None
                while pending:
                    offset, finished = next(iter(pending.items()))
                    if not finished:
                        break
                    pending.popitem(last=False)
                    last = offset
                if last is not None:
                    result[tp] = last + 1
        return result

    def in_flight(self, partitions: set[TopicPartitionKey] | None = None) -> int:
        with self._lock:
            return sum(
                sum(1 for finished in pending.values() if not finished)
                for tp, pending in self._pending.items()
                if partitions is None or tp in partitions
            )

    def wait_all_done(self, timeout_s: float, partitions: set[TopicPartitionKey] | None = None) -> bool:
        """Block until nothing in ``partitions`` (all if None) is in flight; False on time-out."""
        with self._changed:
            return self._changed.wait_for(
                lambda: all(
                    all(pending.values())
                    for tp, pending in self._pending.items()
                    if partitions is None or tp in partitions
                ),
                timeout=timeout_s,
            )

    def forget(self, partitions: set[TopicPartitionKey]) -> None:
        with self._lock:
            for tp in partitions:
                self._pending.pop(tp, None)
