import threading

from command_handler.adapters.offsets import OffsetTracker

TP = ("commands", 3)
OTHER = ("commands", 4)


def test_only_the_finished_prefix_is_committable() -> None:
    t = OffsetTracker()
    for offset in (10, 11, 12):
        t.started(TP, offset)
    t.done(TP, 11)
    assert t.committable() == {}  # 10 is still in flight
    t.done(TP, 10)
    assert t.committable() == {TP: 12}  # next offset to consume after 11
    assert t.committable() == {}  # popped
    assert t.in_flight() == 1
    t.done(TP, 12)
    assert t.committable() == {TP: 13}
    assert t.in_flight() == 0


def test_partitions_are_independent_and_can_be_selected() -> None:
    t = OffsetTracker()
    t.started(TP, 1)
    t.started(OTHER, 7)
    t.done(TP, 1)
    t.done(OTHER, 7)
    assert t.committable({OTHER}) == {OTHER: 8}
    assert t.committable() == {TP: 2}


def test_forget_drops_a_revoked_partition_and_late_acks_are_ignored() -> None:
    t = OffsetTracker()
    t.started(TP, 5)
    t.forget({TP})
    t.done(TP, 5)
    assert t.committable() == {} and t.in_flight() == 0


def test_wait_all_done_wakes_up_when_the_last_ack_arrives() -> None:
    t = OffsetTracker()
    t.started(TP, 1)
    t.started(OTHER, 1)
    assert t.wait_all_done(0.01) is False
    threading.Timer(0.05, t.done, args=(TP, 1)).start()
    assert t.wait_all_done(5, {TP}) is True
    assert t.wait_all_done(0.01) is False  # OTHER still in flight


def test_an_abandoned_offset_is_never_committed_past_and_not_waited_for() -> None:
    tracker = OffsetTracker()
    tp = ("commands", 0)
    for offset in (10, 11, 12, 13):
        tracker.started(tp, offset)
    tracker.done(tp, 10)
    tracker.done(tp, 13)  # finished, but after the abandoned one
    tracker.abandon(tp, 11)  # stopping: 11 was never queued
    tracker.done(tp, 12)  # late callbacks of forgotten offsets change nothing
    assert tracker.wait_all_done(0.1)  # nothing left to wait for
    assert tracker.committable() == {tp: 11}  # only the prefix before the abandoned offset
    assert tracker.committable() == {}
