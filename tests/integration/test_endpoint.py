"""The GraphQL endpoint as a process, beside a handler process, against the real broker, registry and Postgres:
every query over HTTP and the WebSocket, every subscription over the WebSocket (subscriptions-transport-ws, as
the reference's clients speak it), wrong passwords, failed creations and the stream's filters."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from sqlalchemy import create_engine, text
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from command_handler.domain.iban import BANK_IBAN, is_valid_iban

from ..conftest import Services
from .endpoint_process import EndpointProcess, running_endpoint
from .handler_process import HandlerProcess, World, isolated_world

pytestmark = pytest.mark.integration

FIELDS = "{id iban new_balance changed_by from_to descr direction}"
ACCOUNT = "subscription ($u: String! $p: String!) {get_account(username: $u password: $p) {iban token reason}}"
TRANSFER = (
    "subscription ($amount: Int! $uuid: String! $username: String! $to: String! $token: String! $from: String! "
    "$descr: String!) {money_transfer(amount: $amount uuid: $uuid username: $username to: $to token: $token "
    "from: $from descr: $descr) {reason success uuid}}"
)


@pytest.fixture(scope="module")
def world(services: Services) -> Iterator[World]:
    with isolated_world(services.env, "ep" + uuid.uuid4().hex[:8]) as w:
        yield w


@pytest.fixture(scope="module")
def endpoint(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointProcess]:
    logs = tmp_path_factory.mktemp("logs")
    handler = HandlerProcess(world, logs).wait_ready()
    try:
        with running_endpoint(world, logs, uuid.uuid4().hex[:8], ENDPOINT_KEEPALIVE_S="1") as process:
            yield process
    finally:
        assert handler.terminate() == 0, handler.output()[-3000:]


class Socket:
    """A subscriptions-transport-ws client as the reference's load generators are: no connection_init."""

    def __init__(self, url: str, init: bool = False) -> None:
        self._connection = connect(url, subprotocols=["graphql-ws"])  # type: ignore[list-item]
        self.ws: ClientConnection = self._connection.__enter__()
        self.inbox: list[dict[str, Any]] = []
        if init:
            self.ws.send(json.dumps({"type": "connection_init", "payload": {}}))

    def start(self, query: str, variables: dict[str, Any] | None = None) -> str:
        op = uuid.uuid4().hex
        self.ws.send(json.dumps({"id": op, "type": "start", "payload": {"query": query, "variables": variables}}))
        return op

    def next(self, op: str | None = None, kind: str | None = None, timeout_s: float = 30) -> dict[str, Any]:
        """The next message (of operation ``op``, of type ``kind``); others are kept."""
        for i, m in enumerate(self.inbox):
            if (op is None or m.get("id") == op) and (kind is None or m["type"] == kind):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout_s
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if (op is None or message.get("id") == op) and (kind is None or message["type"] == kind):
                return dict(message)
            self.inbox.append(message)

    def ask(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        op = self.start(query, variables)
        message = self.next(op, "data")
        assert "errors" not in message["payload"], message
        return dict(message["payload"]["data"])

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


@pytest.fixture
def socket(endpoint: EndpointProcess) -> Iterator[Socket]:
    s = Socket(endpoint.ws_url)
    yield s
    s.close()


def account(s: Socket, username: str, password: str = "secret-password") -> dict[str, Any]:
    return dict(s.ask(ACCOUNT, {"u": username, "p": password})["get_account"])


def transfer(s: Socket, username: str, token: str, amount: int, frm: str, to: str, descr: str) -> dict[str, Any]:
    variables = {"amount": amount, "uuid": str(uuid.uuid4()), "username": username, "token": token}
    return dict(s.ask(TRANSFER, {**variables, "from": frm, "to": to, "descr": descr})["money_transfer"])


def user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def test_the_schema_is_the_reference_endpoints(endpoint: EndpointProcess) -> None:
    answer = endpoint.graphql(
        "{__schema {queryType {fields {name args {name type {kind name ofType {name}}}}} "
        "subscriptionType {fields {name type {name} args {name type {kind name ofType {name}}}}} "
        'mutationType {name}} dtype: __type(name: "dtype") {enumValues {name}} '
        't: __type(name: "Transaction") {fields {name type {kind name ofType {name}}}}}'
    )
    schema = answer["data"]["__schema"]
    assert schema["mutationType"] is None

    def args(field: dict[str, Any]) -> dict[str, str]:
        return {
            a["name"]: (a["type"]["ofType"]["name"] + "!" if a["type"]["kind"] == "NON_NULL" else a["type"]["name"])
            for a in field["args"]
        }

    queries = {f["name"]: args(f) for f in schema["queryType"]["fields"]}
    assert queries == {
        "transaction_by_id": {"id": "Int!"},
        "transactions_by_iban": {"iban": "String!", "max_items": "Int!"},
        "all_last_transactions": {},
    }
    subscriptions = {f["name"]: (f["type"]["name"], args(f)) for f in schema["subscriptionType"]["fields"]}
    assert subscriptions == {
        "stream_transactions": (
            "Transaction",
            {
                "iban": "String",
                "min_amount": "Int",
                "max_amount": "Int",
                "direction": "dtype",
                "descr_includes": "String",
            },
        ),
        "get_account": ("AccountResult", {"username": "String!", "password": "String!"}),
        "money_transfer": (
            "MoneyTransferResult",
            {
                "uuid": "String!",
                "username": "String!",
                "token": "String!",
                "amount": "Int!",
                "from": "String!",
                "to": "String!",
                "descr": "String!",
            },
        ),
    }
    assert {v["name"] for v in answer["data"]["dtype"]["enumValues"]} == {"DEBIT", "CREDIT"}
    transaction = {
        f["name"]: f["type"].get("name") or f["type"]["ofType"]["name"] for f in answer["data"]["t"]["fields"]
    }
    assert transaction == {
        "id": "Int",
        "iban": "String",
        "new_balance": "String",
        "changed_by": "String",
        "from_to": "String",
        "descr": "String",
        "direction": "dtype",
    }


def test_a_new_username_opens_an_account_and_the_same_password_gets_it_again(socket: Socket) -> None:
    name = user()
    first = account(socket, name)
    assert first["reason"] is None and is_valid_iban(first["iban"]) and len(first["token"]) == 20
    assert account(socket, name) == first


def test_a_wrong_password_is_refused(socket: Socket) -> None:
    name = user()
    account(socket, name, "the-right-one")
    assert account(socket, name, "a-wrong-one") == {"iban": None, "token": None, "reason": "incorrect password"}


def test_a_failed_creation_answers_the_reason_and_forgets_the_account(
    endpoint: EndpointProcess, socket: Socket, world: World
) -> None:
    answer = account(socket, "   ")
    assert answer == {"iban": None, "token": None, "reason": "username can't be empty"}
    engine = create_engine(world.settings.database.url(database=endpoint.db_name).replace("clojure_ch", "clojure_ge"))
    try:
        deadline = time.monotonic() + 10
        while True:
            with engine.connect() as conn:
                left = conn.execute(text("SELECT count(*) FROM account WHERE username = '   '")).scalar()
            if left == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert left == 0
    finally:
        engine.dispose()


def test_a_deposit_is_answered_stored_and_streamed(endpoint: EndpointProcess, socket: Socket) -> None:
    name = user()
    mine = account(socket, name)
    stream = socket.start(
        f"subscription ($iban: String) {{stream_transactions(iban: $iban) {FIELDS}}}", {"iban": mine["iban"]}
    )
    socket.ask("{all_last_transactions {id}}")  # answered after the subscription was registered
    answer = transfer(socket, name, "cash", 1000, "cash", mine["iban"], "deposit")
    assert answer["success"] is True and answer["reason"] is None
    streamed = socket.next(stream, "data")["payload"]["data"]["stream_transactions"]
    assert {k: v for k, v in streamed.items() if k != "id"} == {
        "iban": mine["iban"],
        "new_balance": "€10,00",
        "changed_by": "€10,00",
        "from_to": "cash",
        "descr": "deposit",
        "direction": "CREDIT",
    }
    by_id = socket.ask(f"query ($id: Int!) {{transaction_by_id(id: $id) {FIELDS}}}", {"id": streamed["id"]})
    assert by_id["transaction_by_id"] == streamed
    over_http = endpoint.graphql(
        f"query ($iban: String!) {{transactions_by_iban(iban: $iban, max_items: 10) {FIELDS}}}", {"iban": mine["iban"]}
    )
    assert over_http["data"]["transactions_by_iban"] == [streamed]
    last = endpoint.graphql(f"{{all_last_transactions {FIELDS}}}")["data"]["all_last_transactions"]
    assert streamed in last
    assert endpoint.graphql("{transaction_by_id(id: -1) {id}}")["data"]["transaction_by_id"] is None


def test_records_it_cannot_read_are_skipped_and_the_next_are_stored(
    world: World, endpoint: EndpointProcess, socket: Socket
) -> None:
    settings = world.settings
    name = user()
    mine = account(socket, name)
    # keyed by the account's owner, as its BalanceChanged will be: the same partition, just before the deposit's
    producer = Producer(settings.kafka.common())
    unknown_id = (0).to_bytes(1, "big") + (987_654).to_bytes(4, "big") + b"\x00"  # framed, an id nobody has
    for value in (b"not avro at all", unknown_id):
        producer.produce(settings.topics.balance_changed, key=name.encode(), value=value)
    assert producer.flush(10) == 0
    stream = socket.start(
        f"subscription ($iban: String) {{stream_transactions(iban: $iban) {FIELDS}}}", {"iban": mine["iban"]}
    )
    socket.ask("{all_last_transactions {id}}")  # answered after the subscription was registered
    assert transfer(socket, name, "cash", 500, "cash", mine["iban"], "after garbage")["success"] is True
    streamed = socket.next(stream, "data")["payload"]["data"]["stream_transactions"]
    assert (streamed["descr"], streamed["new_balance"]) == ("after garbage", "€5,00")
    skipped = [line for line in endpoint.output().splitlines() if "skipped " + settings.topics.balance_changed in line]
    assert len(skipped) == 2, endpoint.output()[-3000:]
    assert "not Confluent-framed" in skipped[0] and "schema id 987654" in skipped[1], skipped
    assert endpoint.health("ready")[0] == 200  # skipped, not waited for


def test_refused_transfers_answer_the_handlers_reasons(socket: Socket) -> None:
    name = user()
    mine = account(socket, name)
    bad_token = transfer(socket, name, "bogus-token", 100, mine["iban"], BANK_IBAN, "x")
    assert (bad_token["success"], bad_token["reason"]) == (False, "invalid token")
    too_much = transfer(socket, name, mine["token"], 100_000, mine["iban"], BANK_IBAN, "x")
    assert (too_much["success"], too_much["reason"]) == (False, "insufficient funds")
    op = socket.start(TRANSFER, {"amount": 1, "uuid": "not-a-uuid", "username": name, "token": "t", "from": "cash",
                                 "to": mine["iban"], "descr": "x"})  # fmt: skip
    answer = socket.next(op, "data")["payload"]["data"]["money_transfer"]
    assert answer == {"uuid": "not-a-uuid", "success": False, "reason": "uuid is not a valid UUID"}


def test_stream_transactions_filters(socket: Socket, endpoint: EndpointProcess) -> None:
    a_name, b_name = user(), user()
    a, b = account(socket, a_name), account(socket, b_name)
    query = f"subscription ($iban: String $min: Int $max: Int $dir: dtype $d: String) {{stream_transactions(iban: $iban min_amount: $min max_amount: $max direction: $dir descr_includes: $d) {FIELDS}}}"
    watch = Socket(endpoint.ws_url, init=True)
    try:
        assert watch.next(kind="connection_ack")
        subs = {
            "debits of a": watch.start(query, {"iban": a["iban"], "dir": "DEBIT"}),
            "a from 20 euro": watch.start(query, {"iban": a["iban"], "min": 2000}),
            "a up to -5 euro": watch.start(query, {"iban": a["iban"], "max": -500}),
            "b with dinner": watch.start(query, {"iban": b["iban"], "d": "dinNER"}),
            "all of a": watch.start(query, {"iban": a["iban"]}),
        }
        # the subscriptions are registered once a query after them on the same socket is answered
        watch.ask("{all_last_transactions {id}}")
        assert transfer(socket, a_name, a["token"], 1000, a["iban"], b["iban"], "rent")["success"]
        assert transfer(socket, b_name, b["token"], 2500, b["iban"], a["iban"], "Dinner")["success"]
        assert transfer(socket, a_name, "cash", 1, "cash", a["iban"], "sentinel")["success"]
        seen: dict[str, list[tuple[str, str, str]]] = {name: [] for name in subs}
        while not seen["all of a"] or seen["all of a"][-1][2] != "sentinel":
            message = watch.next(kind="data")
            name = next(n for n, op in subs.items() if op == message["id"])
            t = message["payload"]["data"]["stream_transactions"]
            seen[name].append((t["direction"], t["changed_by"], t["descr"]))
        assert seen == {
            "debits of a": [("DEBIT", "€10,00", "rent")],
            "a from 20 euro": [("CREDIT", "€25,00", "Dinner")],
            "a up to -5 euro": [("DEBIT", "€10,00", "rent")],
            "b with dinner": [("DEBIT", "€25,00", "Dinner")],
            "all of a": [("DEBIT", "€10,00", "rent"), ("CREDIT", "€25,00", "Dinner"), ("CREDIT", "€0,01", "sentinel")],
        }
        # a stopped subscription gets nothing more
        watch.ws.send(json.dumps({"id": subs["all of a"], "type": "stop"}))
        watch.ask("{all_last_transactions {id}}")
        assert transfer(socket, a_name, "cash", 2, "cash", a["iban"], "after stop")["success"]
        assert not [m for m in watch.inbox if m.get("id") == subs["all of a"] and m["type"] == "data"]
    finally:
        watch.close()


def test_connection_init_is_acknowledged_and_kept_alive(endpoint: EndpointProcess) -> None:
    s = Socket(endpoint.ws_url, init=True)
    try:
        assert s.next(kind="connection_ack")["type"] == "connection_ack"
        assert s.next(kind="ka", timeout_s=5)["type"] == "ka"
        assert s.ws.subprotocol == "graphql-ws"
    finally:
        s.close()


def test_a_page_of_another_origin_is_refused(endpoint: EndpointProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(endpoint.ws_url, subprotocols=["graphql-ws"], origin="http://elsewhere.example")  # type: ignore[list-item,arg-type]
    assert refused.value.response.status_code == 403
    with connect(endpoint.ws_url, subprotocols=["graphql-ws"], origin=endpoint.url.rstrip("/")) as ws:  # type: ignore[list-item,arg-type]
        ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"


def test_health_and_the_page(endpoint: EndpointProcess) -> None:
    assert endpoint.health("live") == (200, {"live": True, "ready": True, "waiting_for": None})
    assert endpoint.health("ready")[0] == 200
    import urllib.request

    with urllib.request.urlopen(endpoint.url + "client", timeout=5) as response:
        assert b'id="login-form"' in response.read()
