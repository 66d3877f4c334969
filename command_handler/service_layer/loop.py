"""The consumer loop: records in, deliveries out, offsets committed once their outputs are written.

One loop for both output modes (``delivery.Output``: acknowledged or transactional). A record's path:
``CommandSource.poll`` -> ``Pipeline.decode`` -> ``Pipeline.apply`` (one database transaction for the
batch) -> ``Pipeline.answers`` -> ``Output.send`` -> written -> ``Output.committable`` ->
``CommandSource.store`` (committed at a bounded rate, and synchronously on a revoke and at shutdown).

The rules (each has a unit test in ``tests/unit/test_loop.py``):

* What may heal is waited for: the registry or database away (``Unavailable``, ``Conflict``) or the output
  full (``Backpressure``) pause every assigned partition while the source is still polled, so the handler
  stays in its group and serves rebalances, reports not-ready saying what it waits for, and stops on
  SIGTERM. Partitions assigned meanwhile start paused; a record that arrives anyway is put back.
* A record whose schema id the registry does not know yet holds only its own partition (paused and
  rewound for ``hold_s``, again until the codec's grace makes it poison); every other partition flows.
* A partition taken away during a batch is the next owner's, even if it is given back: nothing more is
  written for its records (they are consumed again from the committed offset).
* Nothing of a batch is sent when stopping meanwhile: it comes back, and the stored outcomes make it
  identical. SIGTERM is honoured in every wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from command_handler.domain.model import Command, PartitionId, Record
from command_handler.errors import Backpressure, Conflict, OutputRefused, Unavailable
from command_handler.retry import Backoff
from command_handler.service_layer.delivery import Delivery, Hold, Output, Pipeline, SetAside
from command_handler.service_layer.ports import CommandSource, Readiness, Telemetry

log = logging.getLogger(__name__)

T = TypeVar("T")

REVOKE_WAIT_S = 20.0  # outputs of revoked partitions waited for before their offsets are committed
SHUTDOWN_WAIT_S = 5.0  # outputs in flight waited for at shutdown
HOLD_S = 0.5  # a partition held for a schema id not known yet is tried again after this long
BROKER_WAIT_S = 5.0  # outputs unacknowledged this long: not-ready, waiting for the broker
BACKPRESSURE_QUIET_S = 5.0  # a full output is reported (not-ready, a warning) once it lasts this long


class Stats:
    """Counters since the last statistics line."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.commands = 0
        self.batches = 0
        self.dead_lettered = 0
        self.since = self._clock()

    def line(self, in_flight: int, queued: int) -> str:
        elapsed = max(self._clock() - self.since, 1e-9)
        size = self.commands / self.batches if self.batches else 0.0
        text = (
            f"stats: {self.commands} commands in {self.batches} batches ({self.commands / elapsed:.1f}/s, "
            f"{size:.1f} per batch), {self.dead_lettered} dead-lettered, {in_flight} awaiting delivery, "
            f"{queued} queued for the producer"
        )
        self.reset()
        return text


class HandlerLoop:
    def __init__(
        self,
        source: CommandSource,
        output: Output,
        pipeline: Pipeline,
        readiness: Readiness,
        telemetry: Telemetry,
        batch_size: int = 500,
        stats_interval_s: float = 30.0,
        hold_s: float = HOLD_S,
        clock: Callable[[], float] = time.monotonic,
        stopping: threading.Event | None = None,
    ) -> None:
        """``stopping``: set by ``request_stop``; shared with an output whose calls must end early then."""
        self.source = source
        self.output = output
        self.pipeline = pipeline
        self.readiness = readiness
        self.telemetry = telemetry
        self.batch_size = batch_size
        self.stats_interval_s = stats_interval_s
        self.hold_s = hold_s
        self._clock = clock
        self.stats = Stats(clock)
        self.stopping = stopping or threading.Event()
        self.fatal: str | None = None
        self._joined = False  # a first assignment came
        self._waiting = False  # a dependency is waited for: every assigned partition is paused
        # partition -> when to try its first record again, and why it waits
        self._held: dict[PartitionId, tuple[float, str]] = {}
        self._moved: set[PartitionId] = set()  # taken away during the current batch (its records: the next owner's)
        telemetry.watch_queue(output.queued)

    # -- control ------------------------------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        if not self.stopping.is_set():
            log.info("stopping: %s", why)
        self.stopping.set()

    def _fail(self, why: str) -> None:
        self.fatal = why
        log.error("%s; stopping without committing it", why)
        self.stopping.set()

    # -- rebalances (called from inside source.poll, on this thread) ---------------------------------

    def assigned(self, partitions: set[PartitionId]) -> bool:
        self._joined = True
        log.info("assigned %d partitions: %s", len(partitions), sorted(p for _, p in partitions))
        return self._waiting

    def revoked(self, partitions: set[PartitionId]) -> None:
        self._moved |= partitions
        if not self.output.drain(partitions, REVOKE_WAIT_S, self.stopping):
            log.warning("revoked partitions still have outputs in flight: their commands will be handled again")
        self.source.store(self.output.committable())
        self.source.commit()
        self._release(partitions)
        log.info("revoked %d partitions", len(partitions))

    def lost(self, partitions: set[PartitionId]) -> None:
        self._moved |= partitions
        self._release(partitions)
        log.warning("lost %d partitions (their uncommitted commands will be handled again)", len(partitions))

    def _release(self, partitions: set[PartitionId]) -> None:
        self.output.release(partitions)
        for tp in partitions:
            self._held.pop(tp, None)
        self.telemetry.released([p for _, p in partitions])

    def _owned(self, record: Record) -> bool:
        return record.source.partition_id not in self._moved

    # -- the loop -----------------------------------------------------------------------------------

    def run(self) -> int:
        self.source.subscribe(self)
        self.output.start()
        self.readiness.reason = "joining the consumer group"
        last_stats = last_report = self._clock()
        try:
            while not self.stopping.is_set():
                self.readiness.beat()
                self._resume_held()
                records = self.source.poll(self.batch_size, 0.1)
                if records:
                    self._moved = set()
                    self._batch(records)
                    self._moved = set()
                why = self.output.fatal()
                if why is not None:
                    self._fail(why)
                    break
                self.source.store(self.output.committable())
                now = self._clock()
                if now - last_report >= 0.5:
                    last_report = now
                    self._report()
                if self.stats_interval_s and now - last_stats >= self.stats_interval_s:
                    last_stats = now
                    log.info(self.stats.line(self.output.in_flight(), self.output.queued()))
        finally:
            self._shutdown()
        return 1 if self.fatal else 0

    def _report(self) -> None:
        """Readiness between batches: not ready while outputs wait long for the broker or a partition is held."""
        oldest = self.output.oldest_wait_s()
        if oldest >= BROKER_WAIT_S:
            self._not_ready(
                f"kafka: waiting for the broker to acknowledge {self.output.in_flight()} outputs "
                f"(the oldest for {oldest:.0f}s)"
            )
        elif self._held:
            held = "; ".join(f"{t}/{p}: {why}" for (t, p), (_, why) in sorted(self._held.items()))
            self._not_ready(f"holding {held}")
        elif self._joined:
            self.readiness.ready = True
            self.readiness.reason = f"consuming {len(self.source.assignment())} partitions"

    def _not_ready(self, reason: str) -> None:
        self.readiness.ready = False
        self.readiness.reason = reason

    def _batch(self, records: list[Record]) -> None:
        started = self._clock()
        slots: list[Delivery | None] = []  # in record order: set aside now, or answered after the transaction
        work: list[tuple[int, Record, Command]] = []
        held_now: set[PartitionId] = set()
        for record in records:
            tp = record.source.partition_id
            if tp in held_now or tp in self._held or not self._owned(record):
                continue  # a held partition's later records come again after its first
            decoded = self._until_available(partial(self.pipeline.decode, record), "decoding")
            if decoded is None:
                return  # stopping: nothing of the batch is sent, it all comes back
            if isinstance(decoded, Hold):
                self._hold(record, decoded)
                held_now.add(tp)
            elif isinstance(decoded, SetAside):
                self.stats.dead_lettered += 1
                slots.append(self.pipeline.set_aside(record, decoded))
            else:
                work.append((len(slots), record, decoded))
                slots.append(None)
        work = [w for w in work if self._owned(w[1])]
        if work:
            results = self._until_available(
                lambda: self.pipeline.apply([r for _, r, _ in work], [c for _, _, c in work]), "database"
            )
            if results is None:
                return
            self.stats.batches += 1
            self.stats.commands += len(work)
            for (slot, record, _), result in zip(work, results, strict=True):
                if isinstance(result, SetAside):
                    self.stats.dead_lettered += 1
                    slots[slot] = self.pipeline.set_aside(record, result)
                    continue
                answers = self._until_available(partial(self.pipeline.answers, record, result), "encoding")
                if answers is None:
                    return
                slots[slot] = answers
        deliveries = [d for d in slots if d is not None]
        if deliveries:
            self._send(deliveries)
            self.telemetry.batch(len(work), self._clock() - started)

    def _send(self, deliveries: list[Delivery]) -> None:
        pending: Sequence[Delivery] = deliveries

        def attempt() -> bool:
            nonlocal pending
            pending = [d for d in pending if self._owned(d.record)]  # a wait may have moved partitions
            pending = self.output.send(pending, self.source.group_metadata)
            if pending:
                raise Backpressure(f"{len(pending)} outputs wait for room in the producer's queue")
            return True

        try:
            self._until_available(attempt, "kafka")
        except OutputRefused as err:
            self._fail(f"the output cannot go on: {err}")

    def _hold(self, record: Record, hold: Hold) -> None:
        tp = record.source.partition_id
        self.source.pause([tp])
        self.source.rewind(record.source)
        if tp not in self._held:
            log.warning(
                "holding %s/%d at %d for %.1fs: %s", tp[0], tp[1], record.source.offset, self.hold_s, hold.reason
            )
        self._held[tp] = (self._clock() + self.hold_s, hold.reason)
        self._report()

    def _resume_held(self) -> None:
        if not self._held or self._waiting:
            return
        now = self._clock()
        due = [tp for tp, (at, _) in self._held.items() if at <= now]
        for tp in due:
            del self._held[tp]
        if due:
            self.source.resume(due)

    # -- waiting ------------------------------------------------------------------------------------

    def _until_available(self, attempt: Callable[[], T], what: str) -> T | None:
        """Run ``attempt``, retrying with backoff while what it needs is away; None if stopping first.
        Meanwhile every partition is paused, the source polled, and readiness says what is waited for
        (a full output only once it lasts ``BACKPRESSURE_QUIET_S``)."""
        backoff = Backoff()
        since = self._clock()
        waited = False
        try:
            while True:
                try:
                    return attempt()
                except (Unavailable, Conflict) as err:
                    quiet = isinstance(err, Backpressure) and self._clock() - since < BACKPRESSURE_QUIET_S
                    delay = 0.02 if quiet else backoff.next()
                    if not quiet:
                        waited = True
                        self._not_ready(f"{what}: waiting ({type(err).__name__}: {str(err)[:200]})")
                        log.warning("%s: %s; retrying in %.1fs", what, err, delay)
                    if what == "database":
                        self.telemetry.db_retry(type(err).__name__.lower())
                    if not self._wait_in_group(delay):
                        return None
                    self.readiness.beat()
                    self.source.store(self.output.committable())  # what was written meanwhile
        finally:
            self._resume_all()
            if waited and not self.stopping.is_set():
                log.info("%s: waited for, going on", what)
                self._report()

    def _wait_in_group(self, seconds: float) -> bool:
        """Wait ``seconds`` in the group (False if stopping meanwhile): every partition paused, the source
        polled (rebalances are served; a record that arrives anyway is put back)."""
        deadline = self._clock() + seconds
        if not self._waiting:
            self._waiting = True
            self.source.pause(self.source.assignment())
        while not self.stopping.is_set():
            left = deadline - self._clock()
            if left <= 0:
                return True
            for record in self.source.poll(1, min(left, 0.2)):
                self.source.rewind(record.source)
                self.source.pause([record.source.partition_id])
        return False

    def _resume_all(self) -> None:
        if self._waiting:
            self._waiting = False
            self.source.resume(self.source.assignment() - set(self._held))

    # -- stopping -----------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._not_ready("stopping")
        if self.fatal is None and not self.output.drain(None, SHUTDOWN_WAIT_S, threading.Event()):
            log.warning("outputs still in flight at shutdown: their commands will be handled again")
        if self.fatal is None:
            self.source.store(self.output.committable())
        self.output.close(2.0)
        self.source.close()
        log.info("stopped (%s)", self.stats.line(self.output.in_flight(), 0))
