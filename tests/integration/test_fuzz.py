"""The seeded corpus of 1,000 hostile records against one handler, good commands between them: each
hostile record is answered or dead-lettered with a reason, the handler never stops, every good command
is answered, and the money adds up (the chaos campaign's audit, on this module's topics)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from confluent_kafka.schema_registry import Schema

from open_bank_devtools.chaos import audit, fuzz
from open_bank_devtools.loadtest.bank_client import BankClient

from ..conftest import Services
from .handler_process import HandlerProcess, World, isolated_world, wait_committed

pytestmark = pytest.mark.integration

SEED = 1123
COUNT = 1000


KNOWN_REASONS = (  # how dead letters' reasons begin, by kind
    "not Confluent-framed",
    "unknown schema id",
    "is not a command record",
    "null value",
    "cannot",
    "an answer can carry",
)


@pytest.fixture
def world(services: Services) -> Iterator[World]:
    with isolated_world(services.env, "fuzz" + uuid4().hex[:8]) as w:
        yield w


def test_a_thousand_hostile_records_are_answered_or_dead_lettered_and_the_good_ones_answered(
    world: World, tmp_path: Path
) -> None:
    handler = HandlerProcess(world, tmp_path, SCHEMA_UNKNOWN_GRACE_S="1").wait_ready()
    client = BankClient(world.settings)
    try:
        target = client.wait_for(client.open_account("fuzz-target")).value
        good_account = client.wait_for(client.open_account("fuzz-good")).value
        before = audit.balances(world.settings)
        foreign = Schema('{"type":"record","name":"Foreign","namespace":"com.example","fields":[]}', "AVRO")
        foreign_id = client.registry.register_schema(f"foreign-{uuid4().hex[:8]}-value", foreign)
        acf = world.settings.topics.account_creation_feedback
        output_id = client.registry.get_latest_version(f"{acf}-nl.openweb.data.AccountCreationConfirmed").schema_id
        assert output_id is not None
        records = fuzz.corpus(
            SEED,
            COUNT,
            client.encode,
            foreign_id,
            output_id,
            fuzz.Target("fuzz-target", target["iban"], target["token"]),
        )
        assert len(records) == COUNT and len({r.kind for r in records}) >= 20
        good = []
        # huge keys and headers go compressed, as a client may send them: within the broker's limit
        from confluent_kafka import Producer

        raw = Producer(
            {
                "bootstrap.servers": world.settings.kafka.brokers,
                "compression.type": "lz4",
                "message.max.bytes": 2_000_000,
            }
        )
        for n, record in enumerate(records):
            raw.produce(world.settings.topics.commands, record.value, record.key, headers=list(record.headers))
            raw.poll(0)
            if n % 10 == 0:
                good.append(client.transfer("fuzz-good", "", 1, "cash", good_account["iban"], f"good {n}"))
        assert raw.flush(60) == 0
        client.flush()
        answers = client.wait_all(good, 300)
        assert {a.record for a in answers.values()} == {"MoneyTransferConfirmed"}
        # the good ones do not wait for the hostile ones (holds are per partition): wait for all of them
        wait_committed(world, 300)
        assert handler.process.poll() is None  # it never stopped
    finally:
        client.close()
        assert handler.terminate() == 0
    findings = audit.audit(world.settings, client.registry, set(good), before)
    assert findings.sent == findings.answered == len(good)
    assert findings.records == COUNT + len(good) + 2  # and the two account creations
    assert findings.unaccounted == 0, findings.examples
    assert findings.clean(), (findings.line(0), dict(findings.examples))
    reasons = Counter(kind for kind in _dead_letter_reasons(world))
    for expected in KNOWN_REASONS:
        assert reasons[expected] > 0, reasons
    assert findings.dead_lettered == sum(reasons.values())


def _dead_letter_reasons(world: World) -> list[str]:
    t = world.settings.topics
    out = []
    for msg in audit.read_topics(world.settings, [t.dead_letter])[t.dead_letter]:
        reason = dict(msg.headers() or [])["dlq.error"]
        assert isinstance(reason, bytes) and reason
        out.append(next((k for k in KNOWN_REASONS if k.encode() in reason), reason.decode(errors="replace")[:40]))
    return out
