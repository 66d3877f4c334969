import json

from command_handler.topology import load_topology

CONTRACT = {
    "commands": ["ConfirmAccountCreation", "ConfirmMoneyTransfer"],
    "account_creation_feedback": ["AccountCreationConfirmed", "AccountCreationFailed"],
    "money_transfer_feedback": ["MoneyTransferConfirmed", "MoneyTransferFailed"],
    "balance_changed": ["BalanceChanged"],
    "commands.dlq": [],  # the handler's dead-letter topic: raw command bytes, no schema
}

FIELDS = {
    "ConfirmAccountCreation": ["id", "username"],
    "AccountCreationConfirmed": ["id", "iban", "token"],
    "AccountCreationFailed": ["id", "reason"],
    "ConfirmMoneyTransfer": ["id", "token", "amount", "from", "to", "description"],
    "MoneyTransferConfirmed": ["id"],
    "MoneyTransferFailed": ["id", "reason"],
    "BalanceChanged": ["iban", "new_balance", "changed_by", "from_to", "description"],
}


def test_topics_records_and_partitions_follow_the_contract() -> None:
    topology = load_topology()
    assert {t.name: [r.name for r in t.records] for t in topology.topics} == CONTRACT
    for topic in topology.topics:
        assert topic.partitions == 24
        assert topic.replication_factor == 3
        # the contract's topics are kept for ever; dead letters (which may hold tokens) for 14 days
        expected = "1209600000" if topic.name == "commands.dlq" else "-1"
        assert topic.config["retention.ms"] == expected


def test_seven_subjects_follow_the_topic_record_name_strategy() -> None:
    subjects = load_topology().subjects()
    assert len(subjects) == 7
    assert "commands-nl.openweb.data.ConfirmMoneyTransfer" in subjects
    for subject, record in subjects.items():
        assert subject.endswith("-" + record.full_name)
        assert record.full_name.startswith("nl.openweb.data.")


def test_record_fields_in_contract_order_and_uuid_is_fixed_16() -> None:
    records = load_topology().records
    assert set(records) == set(FIELDS)
    for name, fields in FIELDS.items():
        schema = json.loads(records[name].schema_str)
        assert [f["name"] for f in schema["fields"]] == fields
        if "id" in fields:
            assert schema["fields"][0]["type"] == {"type": "fixed", "name": "Uuid", "size": 16}
    money = {f["name"]: f["type"] for f in json.loads(records["ConfirmMoneyTransfer"].schema_str)["fields"]}
    assert money["amount"] == "long"


def test_topic_names_can_be_overridden_by_environment_names() -> None:
    topology = load_topology({"KAFKA_COMMAND_TOPIC": "cmds"})
    assert [t.name for t in topology.topics if t.env == "KAFKA_COMMAND_TOPIC"] == ["cmds"]
    assert "cmds-nl.openweb.data.ConfirmAccountCreation" in topology.subjects()


def test_expected_head_matches_alembic() -> None:
    from command_handler.adapters import migrations
    from command_handler.adapters.schema_version import expected_head

    assert expected_head() == migrations.head_revision()


def test_kraft_cluster_ids_never_look_like_an_option() -> None:
    from open_bank_devtools.stack.kafka import new_cluster_id

    ids = [new_cluster_id() for _ in range(2000)]  # about 31 of 2,000 raw ids start with "-"
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
