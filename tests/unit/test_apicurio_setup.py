"""How the stack sets up Apicurio Registry: the JDK it picks, and what its configuration says."""

from pathlib import Path

import pytest

from command_handler.config import load_settings
from open_bank_devtools.stack.apicurio import ApicurioError, ApicurioNode, find_java, java_version
from open_bank_devtools.stack.local_stack import LocalStack, StackConfig


def fake_jdk(root: Path, name: str, version: str) -> Path:
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\n")
    (home / "release").write_text(f'IMPLEMENTOR="test"\nJAVA_VERSION="{version}"\n')
    return home


def test_the_java_version_comes_from_the_release_file(tmp_path: Path) -> None:
    assert java_version(fake_jdk(tmp_path, "a", "25.0.3")) == 25
    assert java_version(fake_jdk(tmp_path, "b", "17.0.15")) == 17
    assert java_version(tmp_path / "nothing") is None


def test_a_named_jdk_must_be_21_or_newer(tmp_path: Path) -> None:
    new = fake_jdk(tmp_path, "new", "21.0.1")
    old = fake_jdk(tmp_path, "old", "17.0.15")
    assert find_java(env={"STACK_REGISTRY_JAVA_HOME": str(new)}) == new / "bin" / "java"
    with pytest.raises(ApicurioError, match=r"STACK_REGISTRY_JAVA_HOME=.* not a JDK of version 21 or newer"):
        find_java(env={"STACK_REGISTRY_JAVA_HOME": str(old)})


def test_without_a_new_enough_jdk_the_error_says_what_to_install(tmp_path: Path) -> None:
    old = fake_jdk(tmp_path, "old", "17.0.15")
    with pytest.raises(ApicurioError) as err:
        find_java(minimum=99, env={"JAVA_HOME": str(old), "PATH": ""})
    assert "Java 99 or newer" in str(err.value) and "Temurin 25" in str(err.value)


def test_the_registry_listens_on_loopback_and_keeps_its_state_in_postgres(tmp_path: Path) -> None:
    config = StackConfig(tmp_path, broker_port=1, registry_port=2, registry_health_port=3, db_port=4)
    stack = LocalStack(config, load_settings({"DB_PASSWORD": "pw"}), out=lambda line: None)
    node = stack.registry_node()
    assert isinstance(node, ApicurioNode)
    props = node.properties()
    assert props["quarkus.http.host"] == props["quarkus.management.host"] == "127.0.0.1"
    assert (props["quarkus.http.port"], props["quarkus.management.port"]) == ("2", "3")
    assert (props["apicurio.storage.kind"], props["apicurio.storage.sql.kind"]) == ("sql", "postgresql")
    assert props["apicurio.datasource.url"] == "jdbc:postgresql://127.0.0.1:4/schema_registry?sslmode=disable"
    assert props["apicurio.datasource.password"] == "pw"
    assert stack.environment()["SCHEMA_REGISTRY_URL"] == "http://127.0.0.1:2/apis/ccompat/v7"
    assert node.ready_url == "http://127.0.0.1:3/health/ready"
