"""The delivery pipeline, free of Kafka types: what each consumed record becomes.

A record is decoded into a command or set aside; the commands of a batch go through the command
service in one transaction; each outcome is encoded into its answers. Every decision to set a record
aside is made here:

* it can never become a command (``PoisonMessage``: not Avro, unknown record, undecodable);
* its key is too large for an answer to carry (checked *before* the transaction: a command is never
  applied without answers that can be written);
* the database refuses it for good (``Rejected``);
* an output of it was refused by the producer (``replacement``): an applied command's answers are
  made writable first (keys cut to the budget), and only a command whose answers still cannot be
  written is set aside; a refused dead letter has no replacement (the output stops the handler).

A dead letter always fits under the producer's size limit: the value, then the key, then the
original headers are left out as needed, and ``dlq.omitted`` says what was.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from command_handler.domain.model import Command, Header, Outcome, OutMessage, PartitionId, Record
from command_handler.errors import PoisonMessage, Rejected, SchemaNotYetKnown
from command_handler.service_layer.commands import CommandService
from command_handler.service_layer.ports import Telemetry

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 1_000_000  # librdkafka's message.max.bytes
MESSAGE_OVERHEAD = 2_048  # record framing and batch headers, kept free under the limit
ANSWER_ROOM = 16_384  # room an answer needs beside its key (feedback, reason, ids)
MAX_REASON = 1_000  # characters of a reason in a dead letter


class Codec(Protocol):
    def decode_command(self, value: bytes | None) -> Command: ...

    def encode(self, command_key: bytes | None, outcome: Outcome) -> list[OutMessage]: ...


@dataclass(frozen=True, slots=True)
class SetAside:
    """The record cannot be processed: why, and the metric's label of the reason."""

    reason: str
    kind: str


@dataclass(frozen=True, slots=True)
class Hold:
    """The record cannot be processed yet, and only its partition waits (a schema id not known yet)."""

    reason: str


@dataclass(slots=True)
class Delivery:
    """A record's outputs: its answers, or its dead letter. ``stage`` counts replacements (see
    ``Pipeline.replacement``); ``applied``: the command changed the ledger (it is never set aside then,
    unless its answers can in no way be written)."""

    record: Record
    messages: list[OutMessage]
    applied: bool = False
    dead_letter: bool = False
    stage: int = 0


class Output(Protocol):
    """Where deliveries go: the output port. Two adapters: acknowledged outputs (a producer thread and
    the only registry of what is in flight and what may be committed) and transactional outputs (a
    batch's deliveries and its next offsets in one Kafka transaction)."""

    def start(self) -> None: ...

    def send(self, deliveries: Sequence[Delivery], group_metadata: Callable[[], object]) -> Sequence[Delivery]:
        """Take ``deliveries`` (one batch's, in order); returns those not taken yet (the output is full:
        send them again after a wait). Raises ``Unavailable`` (nothing of them was written: again later)
        or ``OutputRefused`` (fatal: the output cannot go on)."""
        ...

    def committable(self) -> dict[PartitionId, int]:
        """Per partition, the next offset whose records before it all had their outputs written."""
        ...

    def release(self, partitions: set[PartitionId]) -> None:
        """The partitions are no longer this handler's: forget what of them is in flight."""
        ...

    def drain(self, partitions: set[PartitionId] | None, timeout_s: float, stopping: threading.Event) -> bool:
        """Wait until nothing of ``partitions`` (all: None) is in flight; False on time-out or stopping."""
        ...

    def in_flight(self) -> int: ...

    def oldest_wait_s(self) -> float:
        """How long the oldest output in flight has waited for the broker (0: none)."""
        ...

    def queued(self) -> int: ...

    def fatal(self) -> str | None:
        """Why the output cannot go on, once it cannot."""
        ...

    def close(self, timeout_s: float) -> None: ...


class Pipeline:
    def __init__(
        self,
        codec: Codec,
        service: CommandService,
        dead_letter_topic: str,
        telemetry: Telemetry,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.codec = codec
        self.service = service
        self.dead_letter_topic = dead_letter_topic
        self.telemetry = telemetry
        self.budget = max_message_bytes - MESSAGE_OVERHEAD
        self.max_key = self.budget - ANSWER_ROOM

    def decode(self, record: Record) -> Command | SetAside | Hold:
        """The record's command, or why it is set aside or held. Raises ``Unavailable`` (wait)."""
        try:
            command = self.codec.decode_command(record.value)
        except PoisonMessage as poison:
            return SetAside(str(poison), poison.kind)
        except SchemaNotYetKnown as unknown:
            return Hold(str(unknown))
        if record.key is not None and len(record.key) > self.max_key:
            return SetAside(
                f"its key of {len(record.key)} bytes is over the {self.max_key} bytes an answer can carry "
                "(not applied)",
                "key-too-large",
            )
        return command

    def apply(self, records: Sequence[Record], commands: Sequence[Command]) -> list[Outcome | SetAside]:
        """One transaction for the batch (a command the database refuses is set aside). Raises
        ``Unavailable`` or ``Conflict`` (wait, then the whole batch again: its stored outcomes make it
        identical)."""
        results = self.service.handle_isolated(commands, [r.source for r in records])
        outcomes: list[Outcome | SetAside] = []
        for command, result in zip(commands, results, strict=True):
            kind = type(command).__name__
            if isinstance(result, Rejected):
                self.telemetry.command(kind, "refused")
                outcomes.append(SetAside(f"refused by the database: {result}", "refused-by-database"))
            else:
                self.telemetry.command(kind, "failed" if result.reason is not None else "confirmed")
                outcomes.append(result)
        return outcomes

    def answers(self, record: Record, outcome: Outcome) -> Delivery:
        """The answers of an applied command. Raises ``Unavailable`` (the registry: wait)."""
        return Delivery(record, self.codec.encode(record.key, outcome), applied=True)

    def set_aside(self, record: Record, why: SetAside) -> Delivery:
        """The record's dead letter, logged and counted."""
        self.telemetry.dead_lettered(why.kind)
        log.error("set aside %s to %s: %s", record.source, self.dead_letter_topic, why.reason)
        return Delivery(record, [self.dead_letter(record, why.reason)], dead_letter=True)

    def replacement(self, delivery: Delivery, error: str) -> Delivery | None:
        """What to write instead of ``delivery``, an output of which the producer refused (``error``):
        an applied command's answers with their keys cut to the budget, then its dead letter; a dead
        letter has none (None: the output stops the handler, nothing of the record is committed)."""
        if delivery.dead_letter:
            log.error("the dead letter of %s was refused: %s", delivery.record.source, error)
            return None
        if delivery.applied and delivery.stage == 0:
            log.error("an answer to %s was refused (%s): writing it with its key cut", delivery.record.source, error)
            messages = [self._writable(m) for m in delivery.messages]
            return Delivery(delivery.record, messages, applied=True, stage=1)
        why = "applied, but its answers cannot be written" if delivery.applied else "its answers cannot be written"
        replaced = self.set_aside(delivery.record, SetAside(f"{why}: {error}", "output-refused"))
        replaced.stage = delivery.stage + 1
        return replaced

    def _writable(self, message: OutMessage) -> OutMessage:
        key = message.key or b""
        room = self.budget - (message.size() - len(key)) - 64
        if len(key) <= room:
            return message
        headers = (*message.headers, ("answer.key-cut", f"{len(key)} bytes, kept {max(room, 0)}".encode()))
        return OutMessage(message.topic, key[: max(room, 0)], message.value, headers)

    def dead_letter(self, record: Record, reason: str) -> OutMessage:
        """Raw key and value, the original headers, then ``dlq.error``, ``dlq.topic``, ``dlq.partition`` and
        ``dlq.offset``; within the budget, leaving out the value, then the key, then original headers
        (``dlq.omitted`` lists what was left out)."""
        source = record.source
        ours: list[Header] = [
            ("dlq.error", reason[:MAX_REASON].encode()),
            ("dlq.topic", source.topic.encode()),
            ("dlq.partition", str(source.partition).encode()),
            ("dlq.offset", str(source.offset).encode()),
        ]
        room = self.budget - sum(len(n) + len(v or b"") for n, v in ours) - 200  # 200: dlq.omitted itself
        omitted: list[str] = []
        value, key = record.value, record.key
        if value is not None and len(value) > room:
            omitted.append(f"value ({len(value)} bytes)")
            value = None
        room -= len(value or b"")
        if key is not None and len(key) > room:
            omitted.append(f"key ({len(key)} bytes)")
            key = None
        room -= len(key or b"")
        kept: list[Header] = []
        left_out = 0
        for name, header in record.headers:
            size = len(name) + len(header or b"")
            if size > room:
                left_out += 1
                continue
            kept.append((name, header))
            room -= size
        if left_out:
            omitted.append(f"{left_out} of {len(record.headers)} headers")
        if omitted:
            ours.append(("dlq.omitted", ", ".join(omitted).encode()))
        return OutMessage(self.dead_letter_topic, key, value, (*kept, *ours))
