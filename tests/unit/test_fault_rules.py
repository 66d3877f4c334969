"""Rules of the failure paths that need no service: what is retried, what is refused, what is never logged."""

from uuid import uuid4

import psycopg
import pytest
from sqlalchemy.exc import DBAPIError

from command_handler.adapters.unit_of_work import classify
from command_handler.config import ConfigError, load_settings
from command_handler.domain import rules
from command_handler.domain.iban import iban_for
from command_handler.domain.model import ConfirmMoneyTransfer
from command_handler.domain.rules import Account
from command_handler.errors import Conflict, Rejected, Unavailable


def db_error(error: type[psycopg.Error]) -> DBAPIError:
    return DBAPIError("UPDATE balance ...", {}, error("the server said no"))


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (psycopg.errors.ReadOnlySqlTransaction, Unavailable),  # a standby after a failover
        (psycopg.errors.InsufficientPrivilege, Unavailable),  # a revoked grant
        (psycopg.errors.UndefinedTable, Unavailable),  # a half-applied migration
        (psycopg.errors.LockNotAvailable, Unavailable),  # lock_timeout
        (psycopg.errors.QueryCanceled, Unavailable),  # statement_timeout
        (psycopg.errors.AdminShutdown, Unavailable),
        (psycopg.errors.DeadlockDetected, Conflict),
        (psycopg.errors.SerializationFailure, Conflict),
        (psycopg.errors.NumericValueOutOfRange, Rejected),  # the input itself cannot be stored
        (psycopg.errors.UntranslatableCharacter, Rejected),
        (psycopg.errors.CheckViolation, Rejected),
    ],
)
def test_only_what_the_input_causes_is_refused_for_good(error: type[psycopg.Error], kind: type) -> None:
    assert type(classify(db_error(error))) is kind


def test_a_credit_that_would_overflow_the_balance_is_refused_with_a_reason() -> None:
    rich = Account("rich", iban_for("0000000001"), "t", rules.MAX_BALANCE - 10)
    payer = Account("payer", iban_for("0000000002"), "p", 1_000)
    accounts = {rich.iban: rich, payer.iban: payer}
    too_much = ConfirmMoneyTransfer(uuid4(), "p", 11, payer.iban, rich.iban, "overflow")
    outcome = rules.decide_transfer(too_much, accounts)
    assert outcome.reason == rules.BALANCE_OVERFLOW and not outcome.events
    assert (payer.amount, rich.amount) == (1_000, rules.MAX_BALANCE - 10)  # nothing moved
    exact = ConfirmMoneyTransfer(uuid4(), "p", 10, payer.iban, rich.iban, "to the brim")
    assert rules.decide_transfer(exact, accounts).reason is None and rich.amount == rules.MAX_BALANCE
    deposit = ConfirmMoneyTransfer(uuid4(), "", 1, "cash", rich.iban, "one more cent")
    assert rules.decide_transfer(deposit, accounts).reason == rules.BALANCE_OVERFLOW


@pytest.mark.parametrize(
    ("variable", "setting"),
    [
        ("KAFKA_PRODUCER_EXTRA", "acks=1"),
        ("KAFKA_PRODUCER_EXTRA", "enable.idempotence=false"),
        ("KAFKA_CONSUMER_EXTRA", "enable.auto.commit=true"),
    ],
)
def test_the_extras_cannot_weaken_the_delivery_guarantees(variable: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=f"{variable} may not set {setting.split('=')[0]}"):
        load_settings({variable: setting})


def test_the_producer_keeps_acks_all_and_idempotence_whatever_the_extras() -> None:
    from command_handler.bootstrap import kafka_producer_conf

    conf = kafka_producer_conf(load_settings({"KAFKA_PRODUCER_EXTRA": "linger.ms=7;compression.type=lz4"}))
    assert conf["acks"] == "all" and conf["enable.idempotence"] is True and conf["compression.type"] == "lz4"


def test_registry_credentials_in_the_url_are_never_shown() -> None:
    settings = load_settings({"SCHEMA_REGISTRY_URL": "https://svc:s3cret@registry.example:8081"})
    assert settings.registry.display() == "https://registry.example:8081"
    assert "s3cret" not in repr(settings)
    assert settings.registry.client_conf()["url"] == "https://svc:s3cret@registry.example:8081"  # the client has it
    assert settings.registry.client_conf()["timeout"] > 0  # and a registry that never answers is given up on


def test_the_health_endpoint_listens_on_loopback_unless_told_otherwise() -> None:
    assert load_settings({}).health_host == "127.0.0.1"
    assert load_settings({"HEALTH_HOST": "0.0.0.0"}).health_host == "0.0.0.0"


def test_a_value_the_driver_refuses_is_a_rejection_not_an_outage() -> None:
    import psycopg
    from sqlalchemy.exc import DataError

    from command_handler.adapters.unit_of_work import classify
    from command_handler.errors import Rejected

    refused = DataError("SELECT", {}, psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))
    assert isinstance(classify(refused), Rejected)


@pytest.mark.parametrize(
    "setting",
    [
        "enable.ssl.certificate.verification=false",
        "security.protocol=plaintext",
        "ssl.endpoint.identification.algorithm=none",
        "ssl.ca.location=/tmp/other-ca.pem",
    ],
)
def test_the_extras_cannot_weaken_the_connections_security(setting: str) -> None:
    option = setting.split("=")[0]
    for variable in ("KAFKA_PRODUCER_EXTRA", "KAFKA_CONSUMER_EXTRA"):
        with pytest.raises(ConfigError, match=f"{variable} may not set {option}: the connection's security"):
            load_settings({variable: setting})


@pytest.mark.parametrize("setting", ["message.timeout.ms=300000", "delivery.timeout.ms=1000"])
def test_the_extras_cannot_bring_back_a_delivery_time_out(setting: str) -> None:
    with pytest.raises(ConfigError, match="KAFKA_PRODUCER_EXTRA may not set"):
        load_settings({"KAFKA_PRODUCER_EXTRA": setting})


def test_cooperative_rebalancing_is_refused_at_start_with_a_clear_message() -> None:
    with pytest.raises(ConfigError, match="cooperative-sticky is not supported"):
        load_settings({"KAFKA_CONSUMER_EXTRA": "partition.assignment.strategy=cooperative-sticky"})
    load_settings({"KAFKA_CONSUMER_EXTRA": "partition.assignment.strategy=roundrobin"})  # eager: fine


def test_configuration_errors_never_repeat_a_secret() -> None:
    with pytest.raises(ConfigError) as malformed:
        load_settings({"KAFKA_PRODUCER_EXTRA": "linger.ms=5;sasl.password:hunter2"})
    assert "hunter2" not in str(malformed.value) and "entry 2 of 2 is not 'key=value'" in str(malformed.value)
    with pytest.raises(ConfigError) as bad_url:
        load_settings({"SCHEMA_REGISTRY_URL": "ftp://svc:s3cret@registry.example"})
    assert "s3cret" not in str(bad_url.value) and "SCHEMA_REGISTRY_URL must be http" in str(bad_url.value)


def test_outputs_never_time_out_and_offsets_are_committed_by_librdkafka_at_a_bounded_rate() -> None:
    from command_handler.adapters.kafka_producer import acknowledged_conf
    from command_handler.bootstrap import kafka_consumer_conf, kafka_producer_conf

    settings = load_settings({})
    assert acknowledged_conf(kafka_producer_conf(settings))["message.timeout.ms"] == 0
    conf = kafka_consumer_conf(settings)
    assert conf["enable.auto.commit"] is True and conf["enable.auto.offset.store"] is False
    assert conf["auto.commit.interval.ms"] == 1000
    transactional = kafka_consumer_conf(load_settings({"KAFKA_TRANSACTIONS": "true"}))
    assert transactional["enable.auto.commit"] is False  # the transactions commit the offsets


def test_the_registry_client_does_not_retry_inside_the_loops_wait() -> None:
    assert load_settings({}).registry.client_conf()["max.retries"] == 0


def test_topics_get_min_insync_replicas_with_their_replication_factor() -> None:
    from command_handler.service_layer.synchronizer import SyncReport, min_insync_replicas, sync_topics
    from command_handler.topology import load_topology

    assert [min_insync_replicas(r) for r in (1, 2, 3, 5)] == [1, 1, 2, 2]

    class Admin:
        created: dict[str, tuple[int, dict[str, str]]] = {}

        def broker_count(self) -> int:
            return 1

        def topics(self) -> dict[str, int]:
            return {}

        def create_topic(self, name: str, partitions: int, replication: int, config: dict[str, str]) -> bool:
            self.created[name] = (replication, config)
            return True

        def wait_listed(self, names: list[str], timeout_s: float = 30) -> None:
            pass

        def delete_topic(self, name: str) -> None:
            pass

    report = SyncReport()
    admin = Admin()
    sync_topics(admin, load_topology(), report)
    assert all(r == 1 and c["min.insync.replicas"] == "1" for r, c in admin.created.values())
    assert any("replication factor 1, not 3" in w for w in report.topic_warnings)  # capped, and said so


def test_a_signal_during_the_start_up_wait_is_never_swallowed_by_the_retry() -> None:
    from command_handler.entrypoints.cli import StartupInterrupted
    from command_handler.retry import retry

    def attempt() -> None:
        raise StartupInterrupted("SIGTERM")

    with pytest.raises(StartupInterrupted):
        retry(attempt, "the broker", timeout_s=60, first_delay_s=0.01)


def test_objects_made_at_start_are_out_of_the_collectors_sight() -> None:
    import gc

    from command_handler.entrypoints.cli import freeze_startup_objects

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        freeze_startup_objects()
        # what exists now (modules, schemas, clients) is never walked by a full collection again
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
