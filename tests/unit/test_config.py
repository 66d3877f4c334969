import pytest

from command_handler.config import ConfigError, describe_variables, load_settings


def test_defaults_are_the_reference_defaults() -> None:
    s = load_settings({})
    assert s.kafka.brokers == "localhost:9092"
    assert s.registry.url == "http://localhost:8081"
    assert s.kafka.group_id == "command-handler"
    assert s.kafka.client_id == "command-handler"
    assert s.topics.commands == "commands"
    assert s.topics.account_creation_feedback == "account_creation_feedback"
    assert s.topics.money_transfer_feedback == "money_transfer_feedback"
    assert s.topics.balance_changed == "balance_changed"
    assert (s.database.host, s.database.port, s.database.name) == ("localhost", 5432, "balancedb")
    assert (s.database.user, s.database.password) == ("clojure_ch", "kafka-graphql-pw")
    assert s.kafka.security == {"security.protocol": "plaintext"}


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(
            {
                "DB_PORT": "not-a-port",
                "KAFKA_LINGER_MS": "-1",
                "SCHEMA_REGISTRY_URL": "localhost:8081",
                "LOG_LEVEL": "chatty",
                "KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem",
                "KAFKA_CONSUMER_EXTRA": "fetch.wait.max.ms",
            }
        )
    message = str(err.value)
    for name in (
        "DB_PORT",
        "KAFKA_LINGER_MS",
        "SCHEMA_REGISTRY_URL",
        "LOG_LEVEL",
        "KAFKA_SSL_CA_LOCATION",
        "KAFKA_CONSUMER_EXTRA",
    ):
        assert name in message


def test_topic_names_must_differ() -> None:
    with pytest.raises(ConfigError, match="must differ"):
        load_settings({"KAFKA_ACF_TOPIC": "commands"})


def test_secrets_never_appear_in_repr_or_display() -> None:
    s = load_settings({"DB_PASSWORD": "s3cret-db", "SCHEMA_REGISTRY_BASIC_AUTH": "u:s3cret-sr"})
    text = repr(s) + s.database.display()
    assert "s3cret" not in text
    assert "s3cret-db" in s.database.url()  # but the driver gets it
    assert s.registry.client_conf()["basic.auth.user.info"] == "u:s3cret-sr"


def test_ssl_settings_map_to_librdkafka(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "client.pem", "client.key"))
    for f in (ca, cert, key):
        f.write_text("x")
    s = load_settings(
        {
            "KAFKA_SSL_CA_LOCATION": str(ca),
            "KAFKA_SSL_CERTIFICATE_LOCATION": str(cert),
            "KAFKA_SSL_KEY_LOCATION": str(key),
            "KAFKA_SSL_KEY_PASSWORD": "pw",
        }
    )
    assert s.kafka.security == {
        "security.protocol": "ssl",
        "ssl.ca.location": str(ca),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "ssl.key.password": "pw",
        "ssl.endpoint.identification.algorithm": "https",
    }
    unverified = load_settings({"KAFKA_SSL_CA_LOCATION": str(ca), "KAFKA_SSL_VERIFY_HOSTNAME": "false"})
    assert unverified.kafka.security["ssl.endpoint.identification.algorithm"] == "none"


def test_certificate_without_key_is_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        load_settings({"KAFKA_SSL_CERTIFICATE_LOCATION": str(cert)})


def test_extra_client_settings_are_parsed() -> None:
    s = load_settings({"KAFKA_CONSUMER_EXTRA": "fetch.min.bytes=1; queued.max.messages.kbytes=1024"})
    assert s.kafka.consumer_extra == {"fetch.min.bytes": "1", "queued.max.messages.kbytes": "1024"}


def test_help_table_lists_every_variable_and_hides_secret_defaults() -> None:
    table = describe_variables()
    for name in ("KAFKA_BROKERS", "SCHEMA_REGISTRY_URL", "DB_HOSTNAME", "DB_PASSWORD", "KAFKA_SSL_KEY_PASSWORD"):
        assert name in table
    assert "kafka-graphql-pw" not in table


def test_database_tls_settings_reach_the_url(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root.pem"
    root.write_text("x")
    s = load_settings({"DB_SSLMODE": "verify-full", "DB_SSLROOTCERT": str(root), "DB_PASSWORD": "p@ss/word"})
    url = s.database.url()
    assert "sslmode=verify-full" in url and f"sslrootcert={root}" in url
    assert "p%40ss%2Fword@" in url  # special characters are quoted
    with pytest.raises(ConfigError, match="DB_SSLMODE"):
        load_settings({"DB_SSLMODE": "sometimes"})


def test_an_unreadable_keystore_is_a_configuration_error_without_the_password(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "client.jks"
    store.write_bytes(bytes.fromhex("feedfeed") + b"not really a keystore")
    with pytest.raises(ConfigError) as err:
        load_settings({"SSL_KEYSTORE_LOCATION": str(store), "SSL_PASSWORD": "s3cret-store"})
    assert "SSL_KEYSTORE_LOCATION" in str(err.value) and "s3cret-store" not in str(err.value)
