import json

import avro.schema
import pytest

from open_bank_devtools.stack.registry_store import RegistryError, check_compatibility, identity, parse_avro

V1 = '{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}'
V2_NEW_FIELD_NO_DEFAULT = (
    '{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"long"}]}'
)
V2_NEW_FIELD_DEFAULT = (
    '{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"long","default":0}]}'
)
V2_DROPPED_FIELD = '{"type":"record","name":"R","fields":[]}'


def p(s: str) -> avro.schema.Schema:
    return parse_avro(s)[2]


def test_backward_rejects_a_new_field_without_default() -> None:
    assert check_compatibility("BACKWARD", p(V2_NEW_FIELD_NO_DEFAULT), [p(V1)])
    assert not check_compatibility("BACKWARD", p(V2_NEW_FIELD_DEFAULT), [p(V1)])
    assert not check_compatibility("BACKWARD", p(V2_DROPPED_FIELD), [p(V1)])


def test_forward_and_full() -> None:
    assert check_compatibility("FORWARD", p(V2_DROPPED_FIELD), [p(V1)])
    assert not check_compatibility("FORWARD", p(V2_NEW_FIELD_NO_DEFAULT), [p(V1)])
    assert check_compatibility("FULL", p(V2_NEW_FIELD_NO_DEFAULT), [p(V1)])
    assert not check_compatibility("FULL", p(V2_NEW_FIELD_DEFAULT), [p(V1)])
    assert not check_compatibility("NONE", p(V2_NEW_FIELD_NO_DEFAULT), [p(V1)])


def test_transitive_checks_every_version() -> None:
    older = p('{"type":"record","name":"R","fields":[{"name":"x","type":"int"}]}')
    # V1 can be read by V1 itself but not data written with `older` (no 'a' default)
    assert not check_compatibility("BACKWARD", p(V1), [older, p(V1)])
    assert check_compatibility("BACKWARD_TRANSITIVE", p(V1), [older, p(V1)])


def test_canonical_text_ignores_whitespace() -> None:
    assert parse_avro(V1)[0] == parse_avro(V1.replace(",", ", ").replace(":", ": "))[0]


@pytest.mark.parametrize("bad", ["", "not json", '{"type":"record"}', 42, None])
def test_invalid_schemas_are_42201(bad: object) -> None:
    with pytest.raises(RegistryError) as err:
        parse_avro(bad)
    assert (err.value.status, err.value.code) == (422, 42201)


MONEY = (
    '{"type":"record","name":"ConfirmMoneyTransfer","namespace":"nl.openweb.data","fields":['
    '{"name":"id","type":{"type":"fixed","name":"Uuid","size":16}},{"name":"token","type":"string"}]}'
)


def test_the_same_schema_in_confluents_sense_ignores_layout_key_order_and_redundant_namespaces() -> None:
    same = [
        MONEY,
        json.dumps(json.loads(MONEY), indent=2),
        '{"namespace":"nl.openweb.data","fields":[{"type":{"size":16,"name":"Uuid","type":"fixed",'
        '"namespace":"nl.openweb.data"},"name":"id"},{"type":{"type":"string"},"name":"token"}],'
        '"name":"ConfirmMoneyTransfer","type":"record"}',
        MONEY.replace(
            '"name":"ConfirmMoneyTransfer","namespace":"nl.openweb.data"',
            '"name":"nl.openweb.data.ConfirmMoneyTransfer"',
        ),
    ]
    assert len({identity(json.loads(s)) for s in same}) == 1


def test_properties_docs_and_names_make_another_schema() -> None:
    java = MONEY.replace('"type":"string"', '"type":{"type":"string","avro.java.string":"String"}')
    other_namespace = MONEY.replace('"type":"fixed","name":"Uuid"', '"type":"fixed","name":"Uuid","namespace":"x"')
    documented = MONEY.replace('"name":"token",', '"name":"token","doc":"secret",')
    identities = {identity(json.loads(s)) for s in (MONEY, java, other_namespace, documented)}
    assert len(identities) == 4


def test_normalize_stores_the_normalised_text_and_otherwise_the_text_as_sent() -> None:
    spaced = json.dumps(json.loads(MONEY), indent=2)
    assert parse_avro(spaced)[0] == json.dumps(json.loads(MONEY), separators=(",", ":"))
    assert parse_avro(spaced, normalize=True)[0] == identity(json.loads(MONEY))
