"""The stack's Schema Registry (Apicurio Registry, through its Confluent-compatible API), driven by
confluent_kafka's own client and Avro serde: what the handler and the synchronizer rely on behaves as
in Confluent's registry.

Against an external registry (TEST_SCHEMA_REGISTRY_URL, e.g. Confluent's own) the same tests check
the same expectations there.
"""

import json
import urllib.error
import urllib.request
import uuid

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from command_handler.topology import load_topology

pytestmark = pytest.mark.integration


JSON_TYPES = ("application/vnd.schemaregistry.v1+json", "application/json")


def record(name: str, *fields: tuple[str, str]) -> str:
    return json.dumps(
        {"type": "record", "name": name, "namespace": "test", "fields": [{"name": n, "type": t} for n, t in fields]}
    )


@pytest.fixture
def client(services) -> SchemaRegistryClient:  # type: ignore[no-untyped-def]
    return SchemaRegistryClient({"url": services.env["SCHEMA_REGISTRY_URL"]})


def raw(services, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    request = urllib.request.Request(
        services.env["SCHEMA_REGISTRY_URL"] + path,
        data=body,
        method=method,
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            # Confluent's registry answers application/vnd.schemaregistry.v1+json, Apicurio application/json
            assert response.headers["Content-Type"].split(";")[0] in JSON_TYPES
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return err.code, json.loads(body)
        except ValueError:  # Apicurio answers some malformed requests with a plain text or an empty body
            return err.code, {"message": body.decode(errors="replace")}


def test_same_schema_gets_same_id_across_calls_and_subjects(client: SchemaRegistryClient, unique: str) -> None:
    schema = Schema(record("Same" + unique, ("a", "string")), "AVRO")
    first = client.register_schema(f"s1-{unique}", schema)
    again = SchemaRegistryClient(client.config()).register_schema(f"s1-{unique}", schema)  # no client cache
    other_subject = client.register_schema(f"s2-{unique}", schema)
    assert first == again == other_subject
    assert client.get_versions(f"s1-{unique}") == [1]
    fetched = client.get_schema(first)
    assert json.loads(fetched.schema_str) == json.loads(schema.schema_str)


def test_versions_lookup_and_latest(client: SchemaRegistryClient, unique: str) -> None:
    subject = f"versions-{unique}"
    v1 = Schema(record("V" + unique, ("a", "string")), "AVRO")
    v2 = Schema(
        json.dumps(
            {
                "type": "record",
                "name": "V" + unique,
                "namespace": "test",
                "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "long", "default": 0}],
            }
        ),
        "AVRO",
    )
    id1 = client.register_schema(subject, v1)
    id2 = client.register_schema(subject, v2)
    assert id1 != id2
    assert client.get_versions(subject) == [1, 2]
    latest = client.get_latest_version(subject)
    assert (latest.version, latest.schema_id) == (2, id2)
    assert client.get_version(subject, 1).schema_id == id1
    found = SchemaRegistryClient(client.config()).lookup_schema(subject, v1)
    assert (found.version, found.schema_id, found.subject) == (1, id1, subject)
    assert subject in client.get_subjects()


def test_backward_compatibility_is_enforced_with_409(client: SchemaRegistryClient, unique: str) -> None:
    subject = f"compat-{unique}"
    client.register_schema(subject, Schema(record("C" + unique, ("a", "string")), "AVRO"))
    breaking = Schema(record("C" + unique, ("a", "string"), ("b", "long")), "AVRO")
    assert client.test_compatibility(subject, breaking) is False
    with pytest.raises(SchemaRegistryError) as err:
        client.register_schema(subject, breaking)
    assert (err.value.http_status_code, err.value.error_code) == (409, 409)
    client.set_compatibility(subject, "NONE")
    assert client.get_compatibility(subject) == "NONE"
    assert client.test_compatibility(subject, breaking) is True
    client.register_schema(subject, breaking)
    assert client.get_versions(subject) == [1, 2]


def test_global_config_defaults_to_backward_and_rejects_bad_levels(services, client) -> None:  # type: ignore[no-untyped-def]
    assert client.get_compatibility() == "BACKWARD"
    status, body = raw(services, "PUT", "/config", json.dumps({"compatibility": "SIDEWAYS"}).encode())
    assert (status, body["error_code"]) == (422, 42203)
    status, body = raw(services, "GET", "/config/never-configured-subject")
    # Confluent: 40408 (no subject-level configuration) or 40401 (no such subject); Apicurio: 40401
    assert status == 404 and body["error_code"] in (40401, 40408)


def test_not_found_errors_carry_confluent_codes(client: SchemaRegistryClient, unique: str) -> None:
    with pytest.raises(SchemaRegistryError) as err:
        client.get_versions(f"missing-{unique}")
    assert (err.value.http_status_code, err.value.error_code) == (404, 40401)
    with pytest.raises(SchemaRegistryError) as err:
        client.get_schema(987654321)
    assert (err.value.http_status_code, err.value.error_code) == (404, 40403)
    subject = f"lookup-{unique}"
    client.register_schema(subject, Schema(record("L" + unique, ("a", "string")), "AVRO"))
    with pytest.raises(SchemaRegistryError) as err:
        client.lookup_schema(subject, Schema(record("Other" + unique, ("z", "int")), "AVRO"))
    assert (err.value.http_status_code, err.value.error_code) == (404, 40403)


def test_invalid_schema_is_42201(client: SchemaRegistryClient, unique: str) -> None:
    with pytest.raises(SchemaRegistryError) as err:
        client.register_schema(f"bad-{unique}", Schema('{"type": "record", "name": "X"}', "AVRO"))
    assert (err.value.http_status_code, err.value.error_code) == (422, 42201)


def test_malformed_requests_get_4xx(services) -> None:  # type: ignore[no-untyped-def]
    for method, path, body in (
        ("POST", "/subjects/x/versions", b"{not json"),
        ("POST", "/subjects/x/versions", b"[1, 2]"),
        ("POST", "/subjects/x/versions", json.dumps({"schema": 42}).encode()),
        ("GET", "/subjects/x/versions/notanumber", None),
        ("GET", "/no/such/path", None),
        ("GET", "/schemas/ids/abc", None),
    ):
        status, reply = raw(services, method, path, body)
        assert 400 <= status < 500, (method, path, status, reply)


def test_delete_subject_soft_then_permanent(client: SchemaRegistryClient, unique: str) -> None:
    subject = f"delete-{unique}"
    schema_id = client.register_schema(subject, Schema(record("D" + unique, ("a", "string")), "AVRO"))
    with pytest.raises(SchemaRegistryError) as err:
        client.delete_subject(subject, permanent=True)
    assert err.value.error_code == 40405
    assert client.delete_subject(subject) == [1]
    assert subject not in client.get_subjects()
    fresh = SchemaRegistryClient(client.config())  # no cache
    assert fresh.get_schema(schema_id) is not None  # records framed with it still decode
    assert client.delete_subject(subject, permanent=True) == [1]
    assert subject not in client.get_subjects()


def test_every_record_round_trips_with_topic_record_name_strategy(client: SchemaRegistryClient) -> None:
    """Register the contract's subjects (as the synchronizer does) and round-trip one value of each."""
    topology = load_topology()
    for subject, rec in topology.subjects().items():
        client.register_schema(subject, Schema(rec.schema_str, "AVRO"))
    some_id = uuid.uuid4().bytes
    values = {
        "ConfirmAccountCreation": {"id": some_id, "username": "alice"},
        "AccountCreationConfirmed": {"id": some_id, "iban": "NL66OPEN0000000000", "token": "1" * 20},
        "AccountCreationFailed": {"id": some_id, "reason": "generated iban already exists, try again"},
        "ConfirmMoneyTransfer": {
            "id": some_id,
            "token": "2" * 20,
            "amount": 1000,
            "from": "cash",
            "to": "NL66OPEN0000000000",
            "description": "deposit",
        },
        "MoneyTransferConfirmed": {"id": some_id},
        "MoneyTransferFailed": {"id": some_id, "reason": "insufficient funds"},
        "BalanceChanged": {
            "iban": "NL66OPEN0000000000",
            "new_balance": 5,
            "changed_by": -5,
            "from_to": "cash",
            "description": "d",
        },
    }
    strategy = {"subject.name.strategy": topic_record_subject_name_strategy}
    fresh = SchemaRegistryClient(client.config())
    deserializer = AvroDeserializer(fresh, conf=strategy)
    for topic in topology.topics:
        ctx = SerializationContext(topic.name, MessageField.VALUE)
        for rec in topic.records:
            serializer = AvroSerializer(fresh, rec.schema_str, conf={"auto.register.schemas": False, **strategy})
            data = serializer(values[rec.name], ctx)
            assert data[0] == 0  # Confluent wire format: magic byte, then the 4-byte schema id
            expected_id = fresh.lookup_schema(f"{topic.name}-{rec.full_name}", Schema(rec.schema_str, "AVRO")).schema_id
            assert int.from_bytes(data[1:5], "big") == expected_id
            assert deserializer(data, ctx) == values[rec.name]


def test_ids_survive_a_registry_restart(services, unique: str) -> None:  # type: ignore[no-untyped-def]
    """The registry stopped and started again, as the fault campaign does: it knows every id it gave."""
    if services.stack is None:
        pytest.skip("the registry is external: cannot restart it")
    schema = Schema(record("Restart" + unique, ("a", "string")), "AVRO")
    url = services.env["SCHEMA_REGISTRY_URL"]
    first = SchemaRegistryClient({"url": url}).register_schema(f"restart-{unique}", schema)
    services.stack.stop_service("registry")
    with pytest.raises(Exception):  # noqa: B017 - it is really down: any error of the client will do
        SchemaRegistryClient({"url": url, "timeout": 2}).get_subjects()
    services.stack.start_service("registry")
    services.stack.wait_for_registry(120)
    again = SchemaRegistryClient({"url": url})  # no cache
    assert again.get_schema(first).schema_str is not None
    assert again.register_schema(f"restart-{unique}", schema) == first
    assert again.get_versions(f"restart-{unique}") == [1]


def test_lookups_compare_parsed_schemas_as_confluents_registry_does(client: SchemaRegistryClient, unique: str) -> None:
    subject = f"meaning-{unique}"
    fields = [{"name": "id", "type": {"type": "fixed", "name": "Uuid", "size": 16}}, {"name": "who", "type": "string"}]
    text = json.dumps({"type": "record", "name": f"M{unique}", "namespace": "test", "fields": fields})
    schema_id = client.register_schema(subject, Schema(text, "AVRO"))
    parsed = json.loads(text)
    parsed["fields"][0]["type"]["namespace"] = "test"  # redundant: the enclosing record's namespace
    for alike in (json.dumps(parsed, indent=4), json.dumps(dict(reversed(list(json.loads(text).items()))))):
        assert client.lookup_schema(subject, Schema(alike, "AVRO")).schema_id == schema_id
        assert client.register_schema(subject, Schema(alike, "AVRO")) == schema_id
    assert client.get_versions(subject) == [1]
    # a custom property makes another schema, as in Confluent's registry; its text is kept as sent
    java = text.replace('"type": "string"', '"type": {"type": "string", "avro.java.string": "String"}')
    with pytest.raises(SchemaRegistryError) as err:
        client.lookup_schema(subject, Schema(java, "AVRO"))
    assert err.value.error_code == 40403
    java_id = client.register_schema(subject, Schema(java, "AVRO"))
    assert java_id != schema_id and client.get_versions(subject) == [1, 2]
    assert "avro.java.string" in client.get_version(subject, 2).schema.schema_str
