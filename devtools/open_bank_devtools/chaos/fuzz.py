"""A seeded corpus of hostile records for the commands topic.

Every kind the fault campaign names: random bytes, truncated and bit-flipped Avro,
a wrong magic byte, unknown (fixed and ever new) and foreign schema ids, other record
types, null key or value, non-UTF-8 and huge keys (on valid commands too), huge headers,
huge and NUL-bearing strings, amounts 0,
negative, 2^63-1 and overflowing sums, ids of the wrong length. The same seed
gives the same corpus. What the handler must do with each record is judged by
``audit`` from what came out (an answer to the id it decodes to, or a dead letter
with a reason), not by this module.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

MAX_LONG = 2**63 - 1
UNKNOWN_IDS = (2**31 - 17, 2**31 - 18, 2**31 - 19)  # ids no registry of ours hands out


@dataclass(frozen=True)
class Hostile:
    kind: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Target:
    """An account the corpus's well-formed transfers aim at (deposits, overflowing sums)."""

    username: str
    iban: str
    token: str


Encode = Callable[[str, dict[str, object]], bytes]  # (record name, value) -> Confluent-framed Avro


def corpus(seed: int, count: int, encode: Encode, foreign_id: int, output_id: int, target: Target) -> list[Hostile]:
    """``count`` hostile records (at least one of every kind), the same for the same seed.

    ``encode`` writes our command records with the registered schemas; ``foreign_id`` is a schema id of
    a record that is not ours, ``output_id`` the id of one of the handler's output records."""
    rng = random.Random(seed)

    def transfer(amount: int = 100, **fields: object) -> bytes:
        value: dict[str, object] = {
            "id": uuid.UUID(int=rng.getrandbits(128)).bytes,
            "token": "",
            "amount": amount,
            "from": "cash",
            "to": target.iban,
            "description": f"fuzz {rng.getrandbits(32):08x}",
        }
        value.update(fields)
        return encode("ConfirmMoneyTransfer", value)

    def creation(username: str) -> bytes:
        return encode("ConfirmAccountCreation", {"id": uuid.UUID(int=rng.getrandbits(128)).bytes, "username": username})

    def key() -> bytes:
        return f"fuzz-{rng.getrandbits(24):06x}".encode()

    def framed(schema_id: int, body: bytes) -> bytes:
        return b"\x00" + schema_id.to_bytes(4, "big") + body

    def flipped(data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(5, len(out))  # the body only: a flipped header is another kind
            out[position] ^= 1 << rng.randrange(8)
        return bytes(out)

    def wrong_length_id() -> bytes:
        body = transfer()[5 + 16 :]  # our body without its 16-byte id
        schema_id = int.from_bytes(transfer()[1:5], "big")
        return framed(schema_id, rng.randbytes(rng.choice((0, 8, 15, 17, 32))) + body)

    makers: dict[str, Callable[[], Hostile]] = {
        "random-bytes": lambda: Hostile("random-bytes", key(), rng.randbytes(rng.randint(0, 400))),
        "truncated-avro": lambda: Hostile(
            "truncated-avro", key(), (lambda b: b[: rng.randint(5, len(b) - 1)])(transfer())
        ),
        "bit-flipped-avro": lambda: Hostile("bit-flipped-avro", key(), flipped(transfer())),
        "wrong-magic-byte": lambda: Hostile("wrong-magic-byte", key(), bytes([rng.randint(1, 255)]) + transfer()[1:]),
        "unknown-schema-id": lambda: Hostile(
            "unknown-schema-id", key(), framed(rng.choice(UNKNOWN_IDS), transfer()[5:])
        ),
        "foreign-schema-id": lambda: Hostile("foreign-schema-id", key(), framed(foreign_id, rng.randbytes(40))),
        "other-record-type": lambda: Hostile("other-record-type", key(), framed(output_id, transfer()[5:])),
        "null-value": lambda: Hostile("null-value", key(), None),
        "null-key": lambda: Hostile("null-key", None, transfer()),
        "non-utf8-key": lambda: Hostile("non-utf8-key", b"\xff\xfe\xc3(" + rng.randbytes(8), transfer()),
        "huge-key": lambda: Hostile("huge-key", rng.randbytes(rng.randint(10_000, 300_000)), transfer()),
        # a valid deposit whose key is too large for any answer (sent compressed, it fits the broker):
        # set aside unapplied, never money moved without an answer
        "huge-key-valid-command": lambda: Hostile(
            "huge-key-valid-command", b"K" * rng.randint(990_000, 1_200_000), transfer(amount=rng.randint(1, 100))
        ),
        # a record that fits the broker with its headers, whose dead letter must be cut to fit too
        "huge-headers": lambda: Hostile(
            "huge-headers",
            key(),
            rng.randbytes(rng.randint(800_000, 840_000)),
            tuple((f"h{n}", rng.randbytes(8_000)) for n in range(20)),
        ),
        # ever new schema ids on ever new keys: each holds only its own partition, briefly
        "fresh-unknown-schema-id": lambda: Hostile(
            "fresh-unknown-schema-id", key(), framed(rng.randint(2**30, 2**31 - 100), transfer()[5:])
        ),
        "huge-string": lambda: Hostile(
            "huge-string",
            key(),
            rng.choice(
                (
                    lambda: creation("u" * rng.randint(101, 300_000)),
                    lambda: transfer(description="d" * rng.randint(1001, 300_000)),
                    lambda: transfer(token="t" * rng.randint(101, 100_000)),
                )
            )(),
        ),
        "nul-string": lambda: Hostile(
            "nul-string",
            key(),
            rng.choice(
                (
                    lambda: creation("nul\x00user"),
                    lambda: transfer(description="nul\x00here"),
                    lambda: transfer(to=target.iban + "\x00"),
                )
            )(),
        ),
        "empty-username": lambda: Hostile("empty-username", key(), creation(rng.choice(("", " ", "\t")))),
        "amount-zero": lambda: Hostile("amount-zero", key(), transfer(amount=0)),
        "amount-negative": lambda: Hostile("amount-negative", key(), transfer(amount=-rng.randint(1, MAX_LONG))),
        "amount-max": lambda: Hostile("amount-max", key(), transfer(amount=MAX_LONG)),
        "overflowing-sum": lambda: Hostile(
            "overflowing-sum", key(), transfer(amount=rng.randint(MAX_LONG // 2, MAX_LONG))
        ),
        "wrong-length-id": lambda: Hostile("wrong-length-id", key(), wrong_length_id()),
        "stolen-token-withdrawal": lambda: Hostile(
            "stolen-token-withdrawal",
            key(),
            transfer(amount=rng.randint(1, 1000), token="not-" + target.token, **{"from": target.iban, "to": "cash"}),
        ),
    }
    kinds = list(makers)
    records = [makers[kind]() for kind in kinds]  # every kind at least once
    records += [makers[rng.choice(kinds)]() for _ in range(max(0, count - len(kinds)))]
    return records
