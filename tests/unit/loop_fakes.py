"""Fakes of the consumer loop's ports, for its unit tests: a source of records with partitions, pauses,
rewinds and rebalances on a fake clock; a codec; an output; a producer for the output adapters; the
in-memory bank behind the real command service. No broker, registry or database."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from command_handler.domain.model import (
    Command,
    ConfirmAccountCreation,
    Outcome,
    OutMessage,
    PartitionId,
    Record,
    Source,
)
from command_handler.errors import PoisonMessage, RegistryUnavailable, SchemaNotYetKnown, Unavailable
from command_handler.service_layer.commands import CommandService
from command_handler.service_layer.delivery import Delivery, Pipeline
from command_handler.service_layer.loop import HandlerLoop
from command_handler.service_layer.ports import RebalanceListener

from .memory_ledger import InMemoryBank

TOPIC = "commands"
NS = uuid.UUID("00000000-0000-0000-0000-000000000001")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def record(partition: int, offset: int, value: bytes | None, key: bytes | None = b"alice", headers=()) -> Record:
    return Record(Source(TOPIC, partition, offset), key, value, tuple(headers))


class FakeSource:
    """Partitions of records (offset = index); ``hooks`` run at the start of every poll with its number."""

    def __init__(
        self, clock: Clock, partitions: dict[int, list[bytes | None]], keys: dict[int, bytes] | None = None
    ) -> None:
        self.clock = clock
        self.records: dict[PartitionId, list[Record]] = {
            (TOPIC, p): [record(p, o, v, (keys or {}).get(p, b"alice")) for o, v in enumerate(values)]
            for p, values in partitions.items()
        }
        self.position: dict[PartitionId, int] = {}
        self.assigned: set[PartitionId] = set()
        self.paused: set[PartitionId] = set()
        self.stored: dict[PartitionId, int] = {}
        self.committed: dict[PartitionId, int] = {}
        self.commit_calls = 0
        self.polls = 0
        self.polls_while_all_paused = 0
        self.hooks: list[Callable[[int], None]] = []
        self.listener: RebalanceListener | None = None
        self.closed = False
        self.rewinds: list[Source] = []

    # the port
    def subscribe(self, listener: RebalanceListener) -> None:
        self.listener = listener
        self.assign(set(self.records))

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        self.polls += 1
        if self.assigned and self.assigned <= self.paused:
            self.polls_while_all_paused += 1
        for hook in list(self.hooks):
            hook(self.polls)
        out: list[Record] = []
        for tp in sorted(self.assigned - self.paused):
            while len(out) < max_records and self.position[tp] < len(self.records[tp]):
                out.append(self.records[tp][self.position[tp]])
                self.position[tp] += 1
        if not out:
            self.clock.advance(timeout_s)
        return out

    def assignment(self) -> set[PartitionId]:
        return set(self.assigned)

    def pause(self, partitions: Iterable[PartitionId]) -> None:
        self.paused |= set(partitions) & self.assigned

    def resume(self, partitions: Iterable[PartitionId]) -> None:
        self.paused -= set(partitions)

    def rewind(self, source: Source) -> None:
        self.rewinds.append(source)
        self.position[source.partition_id] = source.offset

    def store(self, offsets: dict[PartitionId, int]) -> None:
        self.stored.update({tp: o for tp, o in offsets.items() if tp in self.assigned})

    def commit(self) -> None:
        self.commit_calls += 1
        self.committed.update(self.stored)

    def group_metadata(self) -> object:
        return "group-metadata"

    def close(self) -> None:
        self.closed = True
        self.committed.update(self.stored)

    # the group's moves
    def assign(self, partitions: set[PartitionId]) -> None:
        assert self.listener is not None
        start_paused = self.listener.assigned(partitions)
        self.assigned |= partitions
        for tp in partitions:
            self.position[tp] = self.committed.get(tp, 0)
            self.stored.pop(tp, None)
        if start_paused:
            self.paused |= partitions
        else:
            self.paused -= partitions

    def revoke(self, partitions: set[PartitionId]) -> None:
        assert self.listener is not None
        self.listener.revoked(partitions)
        self._unassign(partitions)

    def lose(self, partitions: set[PartitionId]) -> None:
        assert self.listener is not None
        self.listener.lost(partitions)
        self._unassign(partitions)

    def _unassign(self, partitions: set[PartitionId]) -> None:
        self.assigned -= partitions
        self.paused -= partitions
        for tp in partitions:
            self.stored.pop(tp, None)

    def all_stored(self) -> bool:
        return all(self.stored.get(tp, 0) >= len(rs) for tp, rs in self.records.items() if tp in self.assigned)


class FakeCodec:
    """Values: ``create:<name>`` (a command), ``poison``, ``unknown`` (schema id not known for ``grace_s``
    from the first time it is seen, then poison). ``registry_down`` > 0: that many calls fail."""

    def __init__(self, clock: Clock, grace_s: float = 5.0) -> None:
        self.clock = clock
        self.grace_s = grace_s
        self.first_unknown: float | None = None
        self.registry_down = 0
        self.decoded: list[bytes | None] = []

    def decode_command(self, value: bytes | None) -> Command:
        if self.registry_down:
            self.registry_down -= 1
            raise RegistryUnavailable("connection refused")
        self.decoded.append(value)
        if value is None or value == b"poison":
            raise PoisonMessage("not Confluent-framed Avro", "not-avro")
        if value.startswith(b"unknown"):
            self.first_unknown = self.first_unknown or self.clock()
            if self.clock() - self.first_unknown < self.grace_s:
                raise SchemaNotYetKnown("schema id 999 is unknown to the registry")
            raise PoisonMessage("unknown schema id 999", "unknown-schema")
        name = value.split(b":", 1)[1].decode()
        return ConfirmAccountCreation(uuid.uuid5(NS, value.decode()), name)

    def encode(self, command_key: bytes | None, outcome: Outcome) -> list[OutMessage]:
        return [OutMessage("account_creation_feedback", command_key, repr(outcome.feedback).encode())]


class Telemetry:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def command(self, kind: str, outcome: str) -> None:
        self.calls.append(("command", (kind, outcome)))

    def dead_lettered(self, kind: str) -> None:
        self.calls.append(("dead_lettered", kind))

    def batch(self, size: int, seconds: float) -> None:
        self.calls.append(("batch", size))

    def db_retry(self, kind: str) -> None:
        self.calls.append(("db_retry", kind))

    def delivered(self, seconds: float) -> None:
        self.calls.append(("delivered", None))

    def released(self, partitions: list[int]) -> None:
        self.calls.append(("released", sorted(partitions)))

    def watch_queue(self, depth: Callable[[], int]) -> None:
        pass


class Readiness:
    """Records every reason it was given, and whether it was ready then."""

    def __init__(self) -> None:
        self.history: list[tuple[bool, str]] = []
        self.ready = False
        self._reason = "starting"

    @property
    def reason(self) -> str:
        return self._reason

    @reason.setter
    def reason(self, value: str) -> None:
        self._reason = value
        self.history.append((self.ready, value))

    def beat(self) -> None:
        pass

    def was(self, ready: bool, starting: str) -> bool:
        return any(r == ready and reason.startswith(starting) for r, reason in self.history)


class FakeOutput:
    """An output that writes at once (``ack``), or keeps deliveries in flight until ``acknowledge``;
    ``room``: how many it takes before it is full; ``unavailable``: sends fail that many times."""

    def __init__(self) -> None:
        self.written: list[Delivery] = []
        self.in_flight_: list[Delivery] = []
        self.ack = True
        self.room: int | None = None
        self.unavailable = 0
        self.released: list[set[PartitionId]] = []
        self.closed = False
        self.drain_acknowledges = False  # the broker answers while a revoke waits
        self.on_drain: Callable[[], None] = lambda: None
        self.fatal_: str | None = None
        self.sends = 0

    def start(self) -> None:
        pass

    def send(self, deliveries: Sequence[Delivery], group_metadata: Callable[[], object]) -> Sequence[Delivery]:
        self.sends += 1
        if self.unavailable:
            self.unavailable -= 1
            raise Unavailable("the transaction timed out")
        take = len(deliveries) if self.room is None else max(0, self.room - len(self.in_flight_))
        for d in deliveries[:take]:
            (self.written if self.ack else self.in_flight_).append(d)
        return deliveries[take:]

    def acknowledge(self, partitions: set[PartitionId] | None = None) -> None:
        done = [d for d in self.in_flight_ if partitions is None or d.record.source.partition_id in partitions]
        self.written += done
        self.in_flight_ = [d for d in self.in_flight_ if d not in done]

    def committable(self) -> dict[PartitionId, int]:
        result: dict[PartitionId, int] = {}
        for d in self.written:
            s = d.record.source
            waiting = [
                x.record.source.offset for x in self.in_flight_ if x.record.source.partition_id == s.partition_id
            ]
            if not waiting or s.offset < min(waiting):
                result[s.partition_id] = max(result.get(s.partition_id, 0), s.offset + 1)
        return result

    def release(self, partitions: set[PartitionId]) -> None:
        self.released.append(set(partitions))
        self.written = [d for d in self.written if d.record.source.partition_id not in partitions]
        self.in_flight_ = [d for d in self.in_flight_ if d.record.source.partition_id not in partitions]

    def drain(self, partitions: set[PartitionId] | None, timeout_s: float, stopping: threading.Event) -> bool:
        self.on_drain()
        if self.drain_acknowledges and not stopping.is_set():
            self.acknowledge(partitions)
        return not any(partitions is None or d.record.source.partition_id in partitions for d in self.in_flight_)

    def in_flight(self) -> int:
        return len(self.in_flight_)

    def oldest_wait_s(self) -> float:
        return 0.0

    def queued(self) -> int:
        return 0

    def fatal(self) -> str | None:
        return self.fatal_

    def close(self, timeout_s: float) -> None:
        self.closed = True

    def values(self, partition: int | None = None) -> list[bytes | None]:
        """The values of the records answered or set aside, in the order written."""
        return [d.record.value for d in self.written if partition is None or d.record.source.partition == partition]

    def dead_letters(self) -> list[Delivery]:
        return [d for d in self.written if d.dead_letter]


class FlakyBank:
    """The in-memory bank, away for ``down`` transactions."""

    def __init__(self) -> None:
        self.bank = InMemoryBank()
        self.down = 0
        self.attempts = 0

    def unit_of_work(self) -> Any:
        self.attempts += 1
        if self.down:
            self.down -= 1
            raise Unavailable("connection refused")
        return self.bank.unit_of_work()


@dataclass
class World:
    clock: Clock
    source: FakeSource
    codec: FakeCodec
    bank: FlakyBank
    output: Any
    readiness: Readiness
    telemetry: Telemetry
    pipeline: Pipeline
    loop: HandlerLoop
    stop_when: list[Callable[[], bool]] = field(default_factory=list)

    def run(self, until: Callable[[], bool] | None = None, max_polls: int = 5_000) -> int:
        """Run the loop until ``until`` holds (default: the offsets after every record are stored)."""
        done = until or self.source.all_stored

        def check(polls: int) -> None:
            assert polls < max_polls, "the loop never got there"
            if done():
                self.loop.request_stop("the test is done")

        self.source.hooks.append(check)
        return self.loop.run()

    def at_poll(self, number: int, action: Callable[[], None]) -> None:
        """Run ``action`` at the start of poll ``number`` (counted from now)."""
        target = self.source.polls + number

        def hook(polls: int) -> None:
            if polls == target:
                action()

        self.source.hooks.append(hook)


def world(
    partitions: dict[int, list[bytes | None]],
    output: Any = None,
    keys: dict[int, bytes] | None = None,
    max_message_bytes: int = 1_000_000,
) -> World:
    clock = Clock()
    source = FakeSource(clock, partitions, keys)
    codec = FakeCodec(clock)
    bank = FlakyBank()
    telemetry = Telemetry()
    readiness = Readiness()
    pipeline = Pipeline(codec, CommandService(bank.unit_of_work), "commands.dlq", telemetry, max_message_bytes)
    output = output if output is not None else FakeOutput()
    loop = HandlerLoop(source, output, pipeline, readiness, telemetry, batch_size=50, stats_interval_s=0, clock=clock)
    return World(clock, source, codec, bank, output, readiness, telemetry, pipeline, loop)
