"""The dead-letter record of a command that can never be handled: its raw key and value, and why.

Headers: the original ones, then ``dlq.error`` (the reason), ``dlq.topic``,
``dlq.partition`` and ``dlq.offset`` (where it came from). A key or value too
large to be produced again is left out (the key first), and ``dlq.key-omitted``
or ``dlq.value-omitted`` says so.
"""

from __future__ import annotations

from confluent_kafka import Message

from command_handler.adapters.avro_codec import OutMessage

MAX_DEAD_LETTER_VALUE = 900_000  # below the producer's default message.max.bytes (1 MB), headers included


def dead_letter(dead_letter_topic: str, msg: Message, reason: str) -> OutMessage:
    original = msg.headers() or []
    headers: list[tuple[str, str | bytes | None]] = list(original.items() if isinstance(original, dict) else original)
    headers += [
        ("dlq.error", reason.encode()),
        ("dlq.topic", (msg.topic() or "").encode()),
        ("dlq.partition", str(msg.partition()).encode()),
        ("dlq.offset", str(msg.offset()).encode()),
    ]
    key, value = msg.key(), msg.value()
    if key is not None and len(key) + len(value or b"") > MAX_DEAD_LETTER_VALUE:
        headers.append(("dlq.key-omitted", f"{len(key)} bytes".encode()))
        key = None
    if value is not None and len(value) > MAX_DEAD_LETTER_VALUE:
        headers.append(("dlq.value-omitted", f"{len(value)} bytes, over {MAX_DEAD_LETTER_VALUE}".encode()))
        value = None
    return OutMessage(dead_letter_topic, key, value, headers)
