import avro.schema
import pytest

from open_bank_devtools.stack.registry_store import RegistryError, check_compatibility, parse_avro

V1 = '{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}'
V2_NEW_FIELD_NO_DEFAULT = (
    '{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"long"}]}'
)
V2_NEW_FIELD_DEFAULT = (
    '{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"long","default":0}]}'
)
V2_DROPPED_FIELD = '{"type":"record","name":"R","fields":[]}'


def p(s: str) -> avro.schema.Schema:
    return parse_avro(s)[1]


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
