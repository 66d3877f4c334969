"""The handler as a process, against the real broker, registry and Postgres: the contract row by row."""

import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from sqlalchemy import create_engine, text

from command_handler.domain import rules
from command_handler.domain.iban import BANK_IBAN, is_valid_iban
from command_handler.topology import load_topology
from open_bank_devtools.loadtest.bank_client import Answer, BankClient

from ..conftest import Services
from .handler_process import HandlerProcess, World, isolated_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(services: Services) -> Iterator[World]:
    with isolated_world(services.env, "e2e" + uuid4().hex[:8]) as w:
        yield w


@pytest.fixture(scope="module")
def handler(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandlerProcess]:
    # a schema id the registry does not know is waited for 6 s before its record is dead-lettered
    process = HandlerProcess(world, tmp_path_factory.mktemp("logs"), SCHEMA_UNKNOWN_GRACE_S="6").wait_ready()
    yield process
    assert process.terminate() == 0, process.output()[-3000:]
    assert "stopped" in process.output()


@pytest.fixture(scope="module")
def client(world: World, handler: HandlerProcess) -> Iterator[BankClient]:
    c = BankClient(world.settings)
    yield c
    c.close()


def open_account(client: BankClient, username: str) -> dict:
    answer = client.wait_for(client.open_account(username))
    assert answer.record == "AccountCreationConfirmed", answer
    return answer.value


def failed_reason(answer: Answer) -> str:
    assert answer.record == "MoneyTransferFailed", answer
    return str(answer.value["reason"])


def test_account_creation_answers_with_iban_and_token_keyed_by_username(client: BankClient) -> None:
    command_id = client.open_account("alice")
    answer = client.wait_for(command_id)
    assert answer.record == "AccountCreationConfirmed"
    assert answer.key == b"alice"
    assert answer.value["id"] == command_id.bytes
    assert is_valid_iban(answer.value["iban"])
    assert len(answer.value["token"]) == 20 and answer.value["token"].isdigit()


def test_deposit_transfer_and_balance_changed_events(client: BankClient, world: World) -> None:
    alice, bob = open_account(client, "alice"), open_account(client, "bob")
    deposit = client.transfer("alice", "x", 2000, "cash", alice["iban"], "deposit")
    assert client.wait_for(deposit).record == "MoneyTransferConfirmed"
    (credit,) = client.wait_events(alice["iban"], 1)
    assert credit.key == b"alice"
    assert credit.value == {
        "iban": alice["iban"],
        "new_balance": 2000,
        "changed_by": 2000,
        "from_to": "cash",
        "description": "deposit",
    }
    pay = client.transfer("alice", alice["token"], 1111, alice["iban"], bob["iban"], "lunch")
    answer = client.wait_for(pay)
    assert (answer.record, answer.key) == ("MoneyTransferConfirmed", b"alice")
    debit = client.wait_events(alice["iban"], 2)[1]
    (received,) = client.wait_events(bob["iban"], 1)
    assert debit.value == {
        "iban": alice["iban"],
        "new_balance": 889,
        "changed_by": -1111,
        "from_to": bob["iban"],
        "description": "lunch",
    }
    assert received.key == b"bob"
    assert received.value == {
        "iban": bob["iban"],
        "new_balance": 1111,
        "changed_by": 1111,
        "from_to": alice["iban"],
        "description": "lunch",
    }
    to_bank = client.transfer("bob", bob["token"], 11, bob["iban"], BANK_IBAN, "to the bank")
    assert client.wait_for(to_bank).record == "MoneyTransferConfirmed"
    bank_event = client.wait_events(BANK_IBAN, 1)[-1]
    assert bank_event.key == b"open_web" and bank_event.value["changed_by"] == 11


def test_failures_carry_the_contract_reasons(client: BankClient) -> None:
    a, b = open_account(client, "carol"), open_account(client, "dave")
    cases = {
        client.transfer("carol", a["token"], 1, "NL00OPEN0000000000", b["iban"]): rules.FROM_INVALID,
        client.transfer("carol", a["token"], 1, a["iban"], a["iban"]): rules.SAME_ACCOUNTS,
        client.transfer("carol", "0" * 20, 1, a["iban"], b["iban"]): rules.INVALID_TOKEN,
        client.transfer("carol", a["token"], 50_001, a["iban"], b["iban"]): rules.INSUFFICIENT_FUNDS,
        client.transfer("carol", "", 5, "cash", "NL35OPEN0999999999"): rules.BOTH_UNKNOWN,
        client.transfer("carol", a["token"], 0, a["iban"], b["iban"]): rules.AMOUNT_NOT_POSITIVE,
        client.transfer("carol", a["token"], -500, a["iban"], b["iban"]): rules.AMOUNT_NOT_POSITIVE,
        client.transfer(
            "carol", a["token"], 1, a["iban"], b["iban"], "x" * 5000
        ): "description is too long (at most 1000 characters)",
    }
    for command_id, reason in cases.items():
        answer = client.wait_for(command_id)
        assert failed_reason(answer) == reason
        assert answer.key == b"carol"
    assert client.events_for(a["iban"]) == [] and client.events_for(b["iban"]) == []
    empty = client.wait_for(client.open_account(""))
    assert (empty.record, empty.value["reason"]) == ("AccountCreationFailed", rules.USERNAME_EMPTY)


def test_retried_commands_get_identical_answers_and_no_second_balance_changed(client: BankClient, world: World) -> None:
    creation = client.open_account("erin")
    first = client.wait_for(creation)
    client.open_account("erin", command_id=creation)
    erin = first.value
    deposit = client.transfer("erin", "", 500, "cash", erin["iban"], "once")
    client.wait_for(deposit)
    client.wait_events(erin["iban"], 1)
    client.transfer("erin", "", 500, "cash", erin["iban"], "once", command_id=deposit)
    client.transfer("erin", "", 999, "cash", erin["iban"], "changed content, same id", command_id=deposit)
    # feedback and events travel on different topics: neither waits for the other
    creations = client.wait_answers(creation, 2)
    deposits = client.wait_answers(deposit, 3)
    assert len(creations) == 2 and creations[0].value == creations[1].value
    assert len(deposits) == 3 and all(d.value == deposits[0].value for d in deposits)
    # a later deposit's event follows any event of the retries on erin's partition of balance_changed
    barrier = client.transfer("erin", "", 1, "cash", erin["iban"], "barrier")
    client.wait_for(barrier)
    events = client.wait_events(erin["iban"], 2)
    assert [e.value["description"] for e in events] == ["once", "barrier"]  # no second "once"
    engine = create_engine(world.settings.database.url())
    with engine.connect() as conn:
        assert conn.execute(text("SELECT amount FROM balance WHERE iban = :i"), {"i": erin["iban"]}).scalar() == 501
        assert conn.execute(text("SELECT count(*) FROM balance WHERE username = 'erin'")).scalar() == 1
    engine.dispose()


def test_redelivered_records_get_their_answers_and_events_again(services: Services, tmp_path: Path) -> None:
    """The group's offsets are rewound while no handler runs: the next handler gets the very same records
    again (same partitions and offsets), as after a crash before a commit, and re-sends what they produced."""
    with isolated_world(services.env, "redeliver" + uuid4().hex[:8]) as world:
        handler = HandlerProcess(world, tmp_path, name="first").wait_ready()
        client = BankClient(world.settings)
        try:
            opened = client.wait_for(client.open_account("fay")).value
            deposit = client.transfer("fay", "", 700, "cash", opened["iban"], "deposit")
            client.wait_for(deposit)
            client.transfer("fay", "", 700, "cash", opened["iban"], "deposit", command_id=deposit)  # a retry
            client.wait_answers(deposit, 2)
            barrier = client.transfer("fay", "", 1, "cash", opened["iban"], "barrier")
            client.wait_for(barrier)
            before = [e.value for e in client.wait_events(opened["iban"], 2)]
            assert [e["description"] for e in before] == ["deposit", "barrier"]
            assert handler.terminate() == 0

            rewind_group(world)
            again = HandlerProcess(world, tmp_path, name="again", sync=False).wait_ready()
            try:
                client.wait_answers(barrier, 2)
                assert [a.value for a in client.wait_answers(deposit, 4)][2:] == [client.wait_for(deposit).value] * 2
                after = [e.value for e in client.wait_events(opened["iban"], 4)]
                # the deposit's and the barrier's records were redelivered: their events again, as stored,
                # but with the balance as it is now (701): a reader never sees it go back to 700;
                # the retry's record was redelivered too, and is still answered with its feedback only
                assert after[:2] == before
                assert after[2:] == [{**e, "new_balance": 701} for e in before]
            finally:
                assert again.terminate() == 0
        finally:
            client.close()
        engine = create_engine(world.settings.database.url())
        with engine.connect() as conn:
            amount = conn.execute(text("SELECT amount FROM balance WHERE iban = :i"), {"i": opened["iban"]}).scalar()
        engine.dispose()
        assert amount == 701


def rewind_group(world: World) -> None:
    """Commit offset 0 on every partition of the command topic for the handler's (idle) group."""
    settings = world.settings
    consumer = Consumer({"bootstrap.servers": settings.kafka.brokers, "group.id": settings.kafka.group_id})
    try:
        topic = settings.topics.commands
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.commit(offsets=[TopicPartition(topic, p, 0) for p in partitions], asynchronous=False)
    finally:
        consumer.close()


def dead_letters(world: World, count: int, tries: int = 200) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": world.env["KAFKA_BROKERS"],
            "group.id": f"dlq-reader-{uuid4()}",
            "enable.auto.commit": False,
        }
    )
    topic = world.env["KAFKA_DLQ_TOPIC"]
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    found: list = []
    for _ in range(tries):
        found += [m for m in consumer.consume(100, 0.1) if m.error() is None]
        if len(found) >= count:
            break
    consumer.close()
    return found


def test_poison_messages_go_to_the_dead_letter_topic_and_good_ones_are_answered(
    client: BankClient, world: World
) -> None:
    settings = world.settings
    frank = open_account(client, "frank")
    bc_schema = load_topology().records["BalanceChanged"].schema_str
    registry = client.registry
    not_a_command = AvroSerializer(
        registry,
        bc_schema,
        conf={"auto.register.schemas": False, "subject.name.strategy": topic_record_subject_name_strategy},
    )(
        {"iban": "x", "new_balance": 1, "changed_by": 1, "from_to": "y", "description": "z"},
        SerializationContext(settings.topics.balance_changed, MessageField.VALUE),
    )
    assert not_a_command is not None
    cmt_id = registry.lookup_schema(
        f"{settings.topics.commands}-nl.openweb.data.ConfirmMoneyTransfer",
        __import__("confluent_kafka.schema_registry", fromlist=["Schema"]).Schema(
            load_topology().records["ConfirmMoneyTransfer"].schema_str, "AVRO"
        ),
    ).schema_id
    poisons = {
        b"p-plain": b"just some text",
        b"p-unknown-id": b"\x00\x7f\xff\xff\xf0" + b"\x02" * 20,
        b"p-not-a-command": not_a_command,
        b"p-null": None,
        b"p-truncated": b"\x00" + int(cmt_id).to_bytes(4, "big") + b"\x02",
    }
    good = []
    for key, value in poisons.items():
        client.send_raw(key, value)
        good.append(client.transfer("frank", "", 100, "cash", frank["iban"], f"after {key.decode()}"))
    answers = client.wait_all(good)
    assert all(a.record == "MoneyTransferConfirmed" for a in answers.values())
    assert client.wait_events(frank["iban"], len(good))[-1].value["new_balance"] == 100 * len(good)
    letters = {m.key(): m for m in dead_letters(world, len(poisons))}
    assert set(letters) == set(poisons)
    for key, value in poisons.items():
        message = letters[key]
        headers = dict(message.headers())
        assert message.value() == value
        assert headers["dlq.topic"] == settings.topics.commands.encode()
        assert int(headers["dlq.offset"]) >= 0 and int(headers["dlq.partition"]) >= 0
        assert headers["dlq.error"]
    assert b"not Confluent-framed" in dict(letters[b"p-plain"].headers())["dlq.error"]
    assert b"unknown schema id" in dict(letters[b"p-unknown-id"].headers())["dlq.error"]
    assert b"is not a command record" in dict(letters[b"p-not-a-command"].headers())["dlq.error"]
    assert b"null value" in dict(letters[b"p-null"].headers())["dlq.error"]
    assert b"cannot decode" in dict(letters[b"p-truncated"].headers())["dlq.error"]


def test_a_schema_id_the_registry_learns_late_is_waited_for_not_dead_lettered(
    client: BankClient, world: World, handler: HandlerProcess
) -> None:
    """A registry restored from an older backup (or a lagging follower) does not know a schema id the
    producer already used: the handler waits, saying so on /health/ready, and answers once it knows.

    The real registry hands out ids one after the other: the record is framed with the id that the
    second schema registered from now will get, and once the handler waits for it, that schema is
    registered (after one other), so the registry learns the id late."""
    import io
    import json
    import urllib.error
    import urllib.request

    import fastavro
    from confluent_kafka.schema_registry import Schema

    frank = open_account(client, "frank-late")
    subject = f"{world.settings.topics.commands}-nl.openweb.data.ConfirmMoneyTransfer"
    variant = json.loads(load_topology().records["ConfirmMoneyTransfer"].schema_str)
    # a property of its own makes it a schema of its own, with a new id (a doc alone does not, in Apicurio)
    variant["fields"][-1]["type"] = {"type": "string", "x-producer": f"a newer producer {uuid4()}"}

    def filler(name: str) -> int:
        text = {"type": "record", "name": name, "namespace": "test", "fields": [{"name": "a", "type": "long"}]}
        return client.registry.register_schema(f"filler-{name}-value", Schema(json.dumps(text), "AVRO"))

    latest = filler(f"Late{uuid4().hex}")
    schema_id = latest + 2  # not known to the registry yet
    body = io.BytesIO()
    command_id = uuid4()
    record = {"id": command_id.bytes, "token": "", "amount": 700, "from": "cash", "to": frank["iban"]}
    fastavro.schemaless_writer(body, fastavro.parse_schema(variant), {**record, "description": "late schema"})
    key = f"late-{uuid4()}".encode()
    client.send_raw(key, b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue())
    ready_url = f"http://127.0.0.1:{handler.health_port}/health/ready"
    reason = ""
    deadline = time.monotonic() + 5  # within the handler's grace (6 s here): other records may be held too
    while f"schema id {schema_id} is unknown" not in reason and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(ready_url, timeout=2).close()
        except urllib.error.HTTPError as err:
            reason = json.loads(err.read())["state"]
        time.sleep(0.02)
    assert f"schema id {schema_id} is unknown" in reason
    # the registry catches up: one schema, then the producer's, which gets the id of the record
    assert filler(f"Late{uuid4().hex}") == latest + 1
    assert client.registry.register_schema(subject, Schema(json.dumps(variant), "AVRO")) == schema_id
    assert client.wait_for(command_id).record == "MoneyTransferConfirmed"
    assert key not in {m.key() for m in dead_letters(world, 10**6, tries=20)}


def test_handler_logs_where_poison_came_from(client: BankClient, world: World, handler: HandlerProcess) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": world.settings.kafka.brokers})
    producer.produce(world.settings.topics.commands, b"not avro at all", f"log-{uuid4()}".encode(), partition=3)
    assert producer.flush(10) == 0
    topic = world.settings.topics.commands
    where = f"set aside {topic}/3@"
    handler.wait_until(where)
    line = next(x for x in handler.output().splitlines() if where in x)
    assert "not Confluent-framed Avro" in line


def test_health_and_refusal_without_sync(world: World, tmp_path: Path) -> None:
    import json
    import urllib.request

    from ..conftest import free_port

    port = free_port()
    second = HandlerProcess(world, tmp_path, name="health", sync=False, HEALTH_PORT=str(port)).wait_ready()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as response:
            assert response.status == 200 and json.loads(response.read())["ready"] is True
    finally:
        assert second.terminate() == 0
    unsynced = HandlerProcess(
        world, tmp_path, name="unsynced", sync=False, KAFKA_BC_TOPIC=f"never_created_{uuid4().hex[:6]}"
    )
    assert unsynced.wait(60) == 1
    assert "topics missing" in unsynced.output() and "command-handler sync" in unsynced.output()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at /metrics: (name, sorted labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_move_with_what_the_handler_does(client: BankClient, handler: HandlerProcess) -> None:
    def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
        return float(samples.get((name, tuple(sorted(labels.items()))), 0.0))

    before = scrape(handler.health_port)
    opened = client.wait_for(client.open_account("mia")).value
    refused = client.transfer("mia", "wrong-token", 1, opened["iban"], BANK_IBAN, "no")
    assert client.wait_for(refused).record == "MoneyTransferFailed"
    client.send_raw(b"mia", b"not avro at all")
    client.flush()
    deadline = time.monotonic() + 30
    while True:
        after = scrape(handler.health_port)
        lag_seen = any(name == "open_bank_consumer_lag" for name, _ in after)
        moved = value(after, "open_bank_dead_letters_total", reason="not-avro") > value(
            before, "open_bank_dead_letters_total", reason="not-avro"
        )
        if (moved and lag_seen) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert moved, "the dead letter was counted"
    assert lag_seen, "the consumer lag of the assigned partitions is reported (librdkafka statistics)"
    for name, labels in (
        ("open_bank_commands_total", {"type": "ConfirmAccountCreation", "outcome": "confirmed"}),
        ("open_bank_commands_total", {"type": "ConfirmMoneyTransfer", "outcome": "failed"}),
        ("open_bank_batch_size_count", {}),
        ("open_bank_batch_seconds_count", {}),
        ("open_bank_delivery_seconds_count", {}),
    ):
        assert value(after, name, **labels) > value(before, name, **labels), (name, labels)
    assert ("open_bank_producer_queue_depth", ()) in after


def test_a_command_whose_answer_could_not_be_written_is_set_aside_unapplied_and_its_partition_goes_on(
    client: BankClient, world: World, handler: HandlerProcess
) -> None:
    """Its key (999,990 bytes) fits the broker's limit for the command, but an answer, keyed like it, would
    exceed the producer's 1,000,000 bytes. The command is not applied (no account without an answer), it
    is set aside with the reason, and the next command of the same partition is answered."""
    from confluent_kafka import Producer

    huge_key = b"k" * 999_990
    command_id, after_id = uuid4(), uuid4()
    value = client.encode("ConfirmAccountCreation", {"id": command_id.bytes, "username": "huge-key"})
    after = client.encode("ConfirmAccountCreation", {"id": after_id.bytes, "username": "after-huge-key"})
    producer = Producer({"bootstrap.servers": world.settings.kafka.brokers, "message.max.bytes": 1_048_576})
    producer.produce(world.settings.topics.commands, value, huge_key, partition=0)
    producer.produce(world.settings.topics.commands, after, b"after-huge-key", partition=0)  # the same partition
    assert producer.flush(10) == 0
    assert client.wait_for(after_id).record == "AccountCreationConfirmed"
    letters = [
        m for m in dead_letters(world, 100) if b"key (999990 bytes)" in dict(m.headers() or []).get("dlq.omitted", b"")
    ]
    assert len(letters) == 1
    headers = dict(letters[0].headers())
    assert b"an answer can carry" in headers["dlq.error"] and letters[0].value() == value
    assert letters[0].key() is None and headers["dlq.partition"] == b"0"
    engine = create_engine(world.settings.database.url())
    with engine.connect() as conn:  # not applied: no claim, no account
        claimed = conn.execute(text("SELECT count(*) FROM cac WHERE uuid = :u"), {"u": command_id}).scalar_one()
        accounts = conn.execute(text("SELECT count(*) FROM balance WHERE username = 'huge-key'")).scalar_one()
    engine.dispose()
    assert claimed == 0 and accounts == 0
    assert handler.process.poll() is None  # still running


def test_a_record_with_huge_headers_is_set_aside_within_the_limit_and_its_partition_goes_on(
    client: BankClient, world: World, handler: HandlerProcess
) -> None:
    """About 1 MB in all: an 820 kB value and 160 kB of headers, within the broker's limit. Its dead
    letter keeps what fits under the producer's limit; the partition goes on."""
    import os

    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": world.settings.kafka.brokers, "message.max.bytes": 1_048_576})
    headers = [(f"h{n}", os.urandom(8_000)) for n in range(20)]
    key = f"headers-{uuid4()}".encode()
    producer.produce(world.settings.topics.commands, os.urandom(820_000), key, headers=headers, partition=5)
    after_id = uuid4()
    after = client.encode("ConfirmAccountCreation", {"id": after_id.bytes, "username": "after-huge-headers"})
    producer.produce(world.settings.topics.commands, after, b"after-huge-headers", partition=5)
    assert producer.flush(30) == 0
    assert client.wait_for(after_id, 60).record == "AccountCreationConfirmed"
    [letter] = [m for m in dead_letters(world, 100) if m.key() == key]
    found = dict(letter.headers())
    assert b"not Confluent-framed" in found["dlq.error"] and found["dlq.partition"] == b"5"
    assert len(letter.value() or b"") == 820_000
    assert len(letter.value() or b"") + sum(len(n) + len(v or b"") for n, v in letter.headers()) < 1_000_000
    assert handler.process.poll() is None
