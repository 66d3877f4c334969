"""The consumer loop's rules, with fakes of its source and output and the real pipeline and command
service on the in-memory bank (``loop_fakes``). No broker, registry or database; a fake clock."""

from __future__ import annotations

from command_handler.errors import OutputRefused

from .loop_fakes import TOPIC, FakeOutput, world

A, B = (TOPIC, 0), (TOPIC, 1)


def test_a_batch_is_answered_and_its_offsets_stored_not_committed_one_by_one() -> None:
    w = world({0: [b"create:a0", b"create:a1"], 1: [b"create:b0"]})
    assert w.run() == 0
    assert sorted(w.output.values()) == [b"create:a0", b"create:a1", b"create:b0"]
    assert len(w.bank.bank.state.creations) == 3
    # offsets go to the source's store (committed at its bounded rate), never one commit per batch
    assert w.source.committed == {A: 2, B: 1} and w.source.commit_calls == 0
    assert w.source.closed and w.output.closed


def test_poison_is_set_aside_and_its_own_partition_goes_on() -> None:
    w = world({0: [b"poison", b"create:after"]})
    assert w.run() == 0
    dead = w.output.dead_letters()
    assert [d.record.source.offset for d in dead] == [0]
    headers = dict(dead[0].messages[0].headers)
    assert headers["dlq.error"] == b"not Confluent-framed Avro" and headers["dlq.offset"] == b"0"
    assert dead[0].messages[0].topic == "commands.dlq"
    assert w.output.values(0) == [b"poison", b"create:after"]  # the next record of the same partition
    assert w.source.committed == {A: 2}
    assert ("dead_lettered", "not-avro") in w.telemetry.calls


def test_an_unknown_schema_id_holds_only_its_partition_then_is_set_aside() -> None:
    w = world({0: [b"unknown", b"create:a1"], 1: [b"create:b0", b"create:b1"]})
    assert w.run() == 0
    order = w.output.values()
    # the other partition flowed while the record waited; then it was set aside and its partition went on
    assert order.index(b"create:b1") < order.index(b"unknown") < order.index(b"create:a1")
    assert [d.record.value for d in w.output.dead_letters()] == [b"unknown"]
    assert w.source.rewinds and all(r.partition_id == A for r in w.source.rewinds)
    assert w.codec.decoded.count(b"unknown") > 2  # tried again while held, not set aside at once
    assert b"create:a1" not in w.codec.decoded[: w.codec.decoded.index(b"unknown") + 1]
    assert w.readiness.was(False, "holding commands/0")
    assert w.source.polls_while_all_paused == 0  # never the whole handler


def test_the_database_away_is_waited_for_in_the_group() -> None:
    w = world({0: [b"create:a0"], 1: [b"create:b0"]})
    w.bank.down = 6
    assert w.run() == 0
    assert sorted(w.output.values()) == [b"create:a0", b"create:b0"]
    assert w.source.polls_while_all_paused > 0  # polled while every partition was paused: still in the group
    assert w.readiness.was(False, "database: waiting")
    last_wait = max(i for i, (_, r) in enumerate(w.readiness.history) if r.startswith("database"))
    assert (True, "consuming 2 partitions") in w.readiness.history[last_wait:]  # ready again after it
    assert w.source.paused == set()
    assert ("db_retry", "unavailable") in w.telemetry.calls


def test_a_rebalance_during_a_wait_leaves_the_moved_partition_to_its_next_owner() -> None:
    w = world({0: [b"create:a0"], 1: [b"create:b0"]})
    w.bank.down = 4
    given_back_paused: list[bool] = []

    def move() -> None:
        w.source.revoke({A})
        w.source.assign({A})  # given back at once, during the same wait
        given_back_paused.append(A in w.source.paused)

    w.at_poll(3, move)
    assert w.run() == 0
    # nothing was sent for a0 from the batch during which its partition moved; partition 0 was consumed
    # again from its committed offset, and a0 answered (from its stored outcome) once, from that delivery
    assert w.output.values().count(b"create:a0") == 1
    assert given_back_paused == [True]  # assigned during a wait: paused at once
    assert w.source.committed == {A: 1, B: 1}


def test_a_revoke_waits_for_outputs_in_flight_then_commits_them() -> None:
    output = FakeOutput()
    output.ack = False
    output.drain_acknowledges = True  # the broker answers while the revoke waits
    w = world({0: [b"create:a0", b"create:a1"]}, output=output)
    w.at_poll(3, lambda: w.source.revoke({A}))
    w.run(until=lambda: A not in w.source.assigned)
    assert w.source.commit_calls == 1 and w.source.committed == {A: 2}
    assert {A} in output.released


def test_a_revoke_with_outputs_still_in_flight_commits_none_of_them() -> None:
    output = FakeOutput()
    output.ack = False  # the broker does not answer
    w = world({0: [b"create:a0"]}, output=output)
    w.at_poll(3, lambda: w.source.revoke({A}))
    w.run(until=lambda: A not in w.source.assigned)
    assert w.source.committed == {} and output.in_flight() == 0  # released: the next owner redoes it


def test_a_lost_partition_commits_nothing_and_its_records_are_not_answered() -> None:
    w = world({0: [b"create:a0"], 1: [b"create:b0"]})
    w.bank.down = 4
    w.at_poll(2, lambda: w.source.lose({A}))
    w.run(until=lambda: w.output.written != [])
    assert w.output.values() == [b"create:b0"]
    assert w.source.commit_calls == 0 and A not in w.source.committed
    assert ("released", [0]) in w.telemetry.calls


def test_a_huge_key_is_set_aside_before_the_transaction() -> None:
    huge = b"k" * 2_000_000
    w = world({0: [b"create:huge", b"create:fine"]}, keys={0: huge})
    w2 = world({0: [b"create:fine"]}, keys={0: b"fine"})
    assert w2.run() == 0 and len(w2.bank.bank.state.creations) == 1
    assert w.run() == 0
    assert w.bank.bank.state.creations == {}  # neither applied: never money or accounts without answers
    dead = w.output.dead_letters()
    assert len(dead) == 2 and all(d.messages[0].key is None for d in dead)
    assert all(d.messages[0].size() < 1_000_000 for d in dead)
    assert b"an answer can carry" in dict(dead[0].messages[0].headers)["dlq.error"]


def test_backpressure_is_waited_for_quietly_and_the_rest_sent() -> None:
    output = FakeOutput()
    output.room = 1
    output.ack = False
    w = world({0: [b"create:a0", b"create:a1", b"create:a2"]}, output=output)

    def broker_answers(polls: int) -> None:
        output.acknowledge()

    w.source.hooks.append(broker_answers)
    assert w.run(until=lambda: len(output.written) == 3) == 0
    assert output.values() == [b"create:a0", b"create:a1", b"create:a2"]
    assert not w.readiness.was(False, "kafka")  # a short backpressure is no outage


def test_an_output_that_cannot_go_on_stops_the_handler_without_committing() -> None:
    class RefusingOutput(FakeOutput):
        def send(self, deliveries, group_metadata):  # type: ignore[no-untyped-def]
            raise OutputRefused(0, "an output cannot be written: its dead letter was refused too")

    w = world({0: [b"create:a0"]}, output=RefusingOutput())
    assert w.loop.run() == 1  # nothing can replace the output: it stops, nothing of the record counts
    assert "dead letter was refused" in (w.loop.fatal or "") and w.source.committed == {}


def test_sigterm_during_a_database_wait_stops_without_sending() -> None:
    w = world({0: [b"create:a0"]})
    w.bank.down = 10**9
    w.at_poll(20, lambda: w.loop.request_stop("SIGTERM"))
    assert w.loop.run() == 0
    assert w.output.written == [] and w.source.committed == {} and w.source.closed


def test_sigterm_while_the_output_is_full_stops() -> None:
    output = FakeOutput()
    output.room = 0
    w = world({0: [b"create:a0"]}, output=output)
    w.at_poll(400, lambda: w.loop.request_stop("SIGTERM"))  # 400 polls of 20 ms: 8 s of a full output
    assert w.loop.run() == 0
    assert w.source.committed == {} and output.closed
    assert w.readiness.was(False, "kafka: waiting (Backpressure")  # reported once it lasted


def test_sigterm_with_the_broker_away_stops_and_commits_nothing_in_flight() -> None:
    output = FakeOutput()
    output.ack = False
    w = world({0: [b"create:a0"], 1: [b"create:b0"]}, output=output)
    w.at_poll(5, lambda: w.loop.request_stop("SIGTERM"))
    assert w.loop.run() == 0
    assert output.in_flight() == 2 and w.source.committed == {} and output.closed


def test_sigterm_during_a_revoke_ends_its_wait() -> None:
    output = FakeOutput()
    output.ack = False
    output.drain_acknowledges = True
    output.on_drain = lambda: w.loop.request_stop("SIGTERM")  # the signal arrives while the revoke waits
    w = world({0: [b"create:a0"]}, output=output)
    w.at_poll(3, lambda: w.source.revoke({A}))
    assert w.loop.run() == 0
    assert w.source.committed == {}  # nothing acknowledged: nothing committed


def test_sigterm_mid_transaction_ends_the_batch_uncommitted() -> None:
    output = FakeOutput()
    output.unavailable = 10**9  # every transaction fails: waited for
    w = world({0: [b"create:a0"]}, output=output)
    w.at_poll(30, lambda: w.loop.request_stop("SIGTERM"))
    assert w.loop.run() == 0
    assert output.sends > 1 and output.written == [] and w.source.committed == {}
    assert w.bank.bank.state.creations != {}  # applied: its stored outcome answers it when it comes again


def test_the_same_batch_is_sent_again_after_a_failed_transaction() -> None:
    output = FakeOutput()
    output.unavailable = 3
    w = world({0: [b"create:a0"], 1: [b"create:b0"]}, output=output)
    assert w.run() == 0
    assert sorted(output.values()) == [b"create:a0", b"create:b0"] and output.sends == 4
    assert w.bank.attempts == 1  # the batch was applied once; only its sending was retried


def test_a_registry_outage_is_waited_for() -> None:
    w = world({0: [b"create:a0"]})
    w.codec.registry_down = 5
    assert w.run() == 0
    assert w.output.values() == [b"create:a0"] and w.output.dead_letters() == []
    assert w.readiness.was(False, "decoding: waiting (RegistryUnavailable")
