"""The end-to-end latency test, playing the GraphQL endpoint's part over Kafka.

A probe user opens an account and then, once per interval, does the next step
of the reference UI's 10-step cycle (five cash deposits, five transfers to the
bank), measuring the time until the step's feedback and until its
BalanceChanged arrive. Meanwhile simulated users open accounts and transfer
money between each other (including invalid-token and insufficient-funds
attempts whose reasons are checked), at a rate that rises one step every
``batch_cycle`` loops. The run ends after ``max_time_outs`` answers slower than
``max_interaction_ms``, or after ``max_loops``. One CSV row per loop.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import statistics
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from command_handler.config import Settings
from command_handler.domain.iban import BANK_IBAN
from open_bank_devtools.loadtest.bank_client import Answer, BankClient
from open_bank_devtools.loadtest.resources import ResourceSampler

log = logging.getLogger(__name__)

PRESETS = Path(__file__).parent / "presets"
# The reference UI's cycle: deposits of 10, 20, 50, 100, 200 euro, then transfers to the bank.
PROBE_STEPS: tuple[tuple[str, int], ...] = (
    ("deposit", 1000),
    ("deposit", 2000),
    ("deposit", 5000),
    ("deposit", 10000),
    ("deposit", 20000),
    ("transfer", 1111),
    ("transfer", 2323),
    ("transfer", 3489),
    ("transfer", 9999),
    ("transfer", 21078),
)
CONFIRMED = "confirmed"


def show_progress(line: str, row: Row, progress: bool, width: int) -> None:
    """A loop's line: rewritten in place on a terminal (``progress``), else logged every 10th loop and at
    every time-out."""
    if progress:
        print("\r" + line.ljust(width), end="", file=sys.stderr, flush=True)
    elif row.loop % 10 == 0 or row.timed_out:
        log.info(line)


def preset_values(cls: type, name_or_path: str, what: str, pattern: str) -> dict[str, Any]:
    """The keys of a preset (a name in ``PRESETS`` matching ``pattern``, or a TOML file) for the dataclass
    ``cls``; ValueError naming the known presets, or the keys ``cls`` does not have."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESETS / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob(pattern)))
        raise ValueError(f"no {what} {name_or_path!r}: give a TOML file or one of: {known}")
    data = tomllib.loads(path.read_text())
    allowed = {f.name for f in fields(cls)}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return data


@dataclass(frozen=True)
class LatencyConfig:
    name: str = "python"
    interval_ms: int = 1000
    max_interaction_ms: int = 5000
    max_time_outs: int = 5
    max_loops: int = 600
    min_loops: int = 60
    batch_cycle: int = 10
    load_start: int = 0
    load_step: int = 50
    users: int = 100
    new_account_share: float = 0.01
    invalid_token_share: float = 0.05
    insufficient_funds_share: float = 0.05
    measure_every: int = 20
    load_linger_ms: int = 10  # the background load's producer batches, as the GraphQL endpoint's would

    @classmethod
    def load(cls, name_or_path: str) -> LatencyConfig:
        """A preset name (``reference``, ``ci``) or the path of a TOML file with these keys."""
        return cls(**preset_values(cls, name_or_path, "latency config", "*.toml"))

    def load_at(self, loop: int) -> int:
        """Target background commands per second during ``loop`` (1-based)."""
        return self.load_start + self.load_step * ((loop - 1) // self.batch_cycle)


@dataclass
class Row:
    loop: int
    time_s: float
    step: str
    feedback_ms: float | None
    balance_ms: float | None
    timed_out: int
    load_target: int
    load_offered: float
    load_answered: float
    reason_mismatches: int
    handler_cpu: float | None = None
    handler_rss_mib: float | None = None
    broker_cpu: float | None = None
    broker_rss_mib: float | None = None
    postgres_cpu: float | None = None
    postgres_rss_mib: float | None = None
    # the handler's own word at the end of the loop (its /health/ready): 1 ready, 0 not (no group
    # assignment, waiting for a dependency, stopped, no answer); empty when it has no health endpoint
    handler_ready: int | None = None
    handler_state: str | None = None
    endpoint_cpu: float | None = None  # the GraphQL endpoint (the browser test)
    endpoint_rss_mib: float | None = None
    in_page_ms: float | None = None  # the browser test: click event to row inserted, inside the page


COLUMNS = [f.name for f in fields(Row)]


class BackgroundLoad:
    """Simulated users at a target rate; checks the reasons of the failures it provokes."""

    def __init__(self, client: BankClient, config: LatencyConfig, seed: int = 7) -> None:
        self.client = client
        self.config = config
        self.rng = random.Random(seed)
        self.accounts: list[tuple[str, str, str]] = []  # username, iban, token
        self.expected: dict[uuid.UUID, str] = {}
        self.lock = threading.Lock()
        self.rate = 0.0
        self.sent = 0
        self.answered = 0
        self.mismatches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-load", daemon=True)

    def on_answer(self, topic: str, answer: Answer) -> None:
        if "id" not in answer.value:
            return
        command_id = uuid.UUID(bytes=answer.value["id"])
        with self.lock:
            expected = self.expected.pop(command_id, None)
            if expected is None:
                return
            self.answered += 1
            got = answer.value.get("reason", CONFIRMED)
            if answer.record == "AccountCreationConfirmed":
                self.accounts.append(
                    (answer.key.decode() if answer.key else "", answer.value["iban"], answer.value["token"])
                )
            if expected != "any" and got != expected:
                self.mismatches += 1
                log.warning("background command %s: expected %r, got %r", command_id, expected, got)

    def _expect(self, command_id: uuid.UUID, reason: str) -> None:
        with self.lock:
            self.expected[command_id] = reason
            self.sent += 1

    def open_accounts(self, count: int, timeout_s: float = 60) -> None:
        ids = []
        for i in range(count):
            username = f"bg-{uuid.uuid4().hex[:8]}-{i}"
            command_id = uuid.uuid4()
            self._expect(command_id, CONFIRMED)
            self.client.open_account(username, command_id)
            ids.append(command_id)
        deadline = time.monotonic() + timeout_s
        while len(self.accounts) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(self.accounts) < count:
            raise TimeoutError(f"only {len(self.accounts)} of {count} background accounts opened")
        for username, iban, _ in list(self.accounts):
            deposit = uuid.uuid4()
            self._expect(deposit, CONFIRMED)
            self.client.transfer(username, "", 10_000_000, "cash", iban, "start", deposit)
        self.client.flush()

    def _one(self) -> None:
        c = self.config
        roll = self.rng.random()
        command_id = uuid.uuid4()
        if roll < c.new_account_share:
            self._expect(command_id, CONFIRMED)
            self.client.open_account(f"bg-{command_id.hex[:12]}", command_id)
            return
        with self.lock:
            (user, frm, token), (_, to, _) = self.rng.sample(self.accounts, 2)
        roll -= c.new_account_share
        if roll < c.invalid_token_share:
            self._expect(command_id, "invalid token")
            self.client.transfer(user, "0" * 20, 100, frm, to, "bad token", command_id)
        elif roll < c.invalid_token_share + c.insufficient_funds_share:
            self._expect(command_id, "insufficient funds")
            self.client.transfer(user, token, 10**15, frm, to, "too much", command_id)
        else:
            self._expect(command_id, "any")  # random amounts between users: confirmed, or rarely insufficient
            self.client.transfer(user, token, self.rng.randint(1, 5000), frm, to, "background", command_id)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self.rate <= 0:
                time.sleep(0.05)
                next_at = time.monotonic()
                continue
            now = time.monotonic()
            if now < next_at:
                time.sleep(min(next_at - now, 0.01))
                continue
            due = int((now - next_at) * self.rate) + 1
            for _ in range(min(due, 1000)):
                self._one()
            next_at += due / self.rate

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def counters(self) -> tuple[int, int, int]:
        with self.lock:
            return self.sent, self.answered, self.mismatches


def results_path(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y-%m-%d-%H-%M")
    path = directory / f"{name}-{stamp}.csv"
    n = 2
    while path.exists():
        path = directory / f"{name}-{stamp}-{n}.csv"
        n += 1
    return path


def _fmt(value: Any) -> Any:
    return "" if value is None else (round(value, 3) if isinstance(value, float) else value)


@dataclass(frozen=True)
class RssTrend:
    """The handler's RSS over one run: what a soak is for."""

    samples: int
    minutes: float
    first_mib: float
    last_mib: float
    peak_mib: float
    slope_mib_per_10_min: float  # least-squares line through every sample

    def line(self) -> str:
        return (
            f"handler RSS: {self.first_mib:.1f} MiB at first, {self.last_mib:.1f} MiB at last, peak "
            f"{self.peak_mib:.1f} MiB over {self.minutes:.1f} min ({self.samples} samples); slope "
            f"{self.slope_mib_per_10_min:+.2f} MiB per 10 min"
        )


def rss_trend(path: Path) -> RssTrend | None:
    """The RSS trend of the handler in a results file; None with fewer than two samples."""
    with open(path, newline="") as f:
        points = [(float(r["time_s"]), float(r["handler_rss_mib"])) for r in csv.DictReader(f) if r["handler_rss_mib"]]
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    times, rss = [t for t, _ in points], [m for _, m in points]
    slope = statistics.linear_regression(times, rss).slope
    return RssTrend(len(points), (times[-1] - times[0]) / 60, rss[0], rss[-1], max(rss), slope * 600)


class LatencyTest:
    def __init__(
        self,
        settings: Settings,
        config: LatencyConfig,
        results_dir: Path,
        sampler: ResourceSampler,
        progress: bool | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.results_dir = results_dir
        self.sampler = sampler
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.load: BackgroundLoad | None = None
        self.time_outs = 0
        self.client = BankClient(settings, linger_ms=config.load_linger_ms, keep_all=False, on_answer=self._on_answer)
        # the probe sends through a producer of its own that does not wait to batch
        self.probe = Producer({**settings.kafka.common(), "acks": "all", "linger.ms": 0})
        self.health_url = f"http://127.0.0.1:{settings.health_port}/health/ready" if settings.health_port else None

    def _handler_health(self) -> tuple[int | None, str | None]:
        """(1 ready / 0 not, its state) from the handler's health endpoint; (None, None) without one."""
        if self.health_url is None:
            return None, None
        try:
            with urllib.request.urlopen(self.health_url, timeout=1) as answer:
                report = json.loads(answer.read())
        except urllib.error.HTTPError as err:  # 503: not ready, with the same report
            try:
                report = json.loads(err.read())
            except ValueError:
                return 0, f"HTTP {err.code}"
        except (OSError, ValueError) as err:
            return 0, f"no answer ({type(err).__name__})"
        return int(bool(report.get("ready"))), str(report.get("state", ""))[:120]

    def _on_answer(self, topic: str, answer: Answer) -> None:
        if self.load is not None:
            self.load.on_answer(topic, answer)

    def _probe_account(self) -> tuple[str, str, str]:
        command_id = uuid.uuid4()
        self.client.watched_ids.add(command_id)
        self.client.open_account("probe", command_id)
        answer = self.client.wait_for(command_id, timeout_s=60)
        if answer.record != "AccountCreationConfirmed":
            raise RuntimeError(f"the probe could not open an account: {answer.value}")
        self.client.watched_ibans.add(answer.value["iban"])
        self.client.watched_keys.add(b"probe")
        return "probe", answer.value["iban"], answer.value["token"]

    def _probe_step(self, loop: int, account: tuple[str, str, str]) -> tuple[str, float | None, float | None]:
        username, iban, token = account
        kind, amount = PROBE_STEPS[(loop - 1) % len(PROBE_STEPS)]
        description = f"probe loop {loop}"
        command_id = uuid.uuid4()
        self.client.watched_ids.add(command_id)
        limit_s = self.config.max_interaction_ms / 1000
        start = time.monotonic()
        frm, to, token = ("cash", iban, "") if kind == "deposit" else (iban, BANK_IBAN, token)
        value = self.client.encode_transfer(command_id, token, amount, frm, to, description)
        self.probe.produce(self.settings.topics.commands, value, username.encode())
        self.probe.poll(0)
        step = f"{kind} {amount / 100:.2f}"
        try:
            feedback = self.client.wait_for(command_id, timeout_s=limit_s)
        except TimeoutError:
            return step, None, None
        event = self.client.wait_event(
            iban,
            lambda a: a.value["description"] == description,
            timeout_s=max(0.0, start + limit_s - time.monotonic()),
        )
        feedback_ms = (feedback.received - start) * 1000
        balance_ms = None if event is None else (event.received - start) * 1000
        return step, feedback_ms, balance_ms

    def run(self) -> tuple[Path, int]:
        """Run until the end criterion; return the results file and the number of loops done."""
        c = self.config
        account = self._probe_account()
        self.load = BackgroundLoad(self.client, c)
        self.load.open_accounts(min(c.users, 1000))
        self.load.start()
        path = results_path(self.results_dir, c.name)
        time_outs = self.time_outs = 0
        loop = 0
        started = time.monotonic()
        last_sent, last_answered, last_at = *self.load.counters()[:2], time.monotonic()
        self.sampler.sample()  # prime the CPU counters
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            while loop < c.max_loops and time_outs < c.max_time_outs:
                loop += 1
                loop_start = time.monotonic()
                self.load.rate = c.load_at(loop)
                step, feedback_ms, balance_ms = self._probe_step(loop, account)
                timed_out = balance_ms is None or balance_ms > c.max_interaction_ms
                time_outs += timed_out
                self.time_outs = time_outs
                remaining = c.interval_ms / 1000 - (time.monotonic() - loop_start)
                if remaining > 0:
                    time.sleep(remaining)
                sent, answered, mismatches = self.load.counters()
                now = time.monotonic()
                elapsed = max(now - last_at, 1e-9)
                row = Row(
                    loop=loop,
                    time_s=now - started,
                    step=step,
                    feedback_ms=feedback_ms,
                    balance_ms=balance_ms,
                    timed_out=int(timed_out),
                    load_target=c.load_at(loop),
                    load_offered=(sent - last_sent) / elapsed,
                    load_answered=(answered - last_answered) / elapsed,
                    reason_mismatches=mismatches,
                )
                last_sent, last_answered, last_at = sent, answered, now
                row.handler_ready, row.handler_state = self._handler_health()
                if loop % c.measure_every == 0:
                    for component, (cpu, rss) in self.sampler.sample().items():
                        setattr(row, f"{component}_cpu", cpu)
                        setattr(row, f"{component}_rss_mib", rss)
                writer.writerow({k: _fmt(v) for k, v in asdict(row).items()})
                f.flush()
                self._report(row, time_outs)
        self.load.stop()
        if self.progress:
            print(file=sys.stderr)
        self.client.close()
        self.probe.flush(5)
        return path, loop

    def _report(self, row: Row, time_outs: int) -> None:
        last = "time-out" if row.balance_ms is None else f"{row.feedback_ms:.1f}/{row.balance_ms:.1f} ms"
        line = (
            f"loop {row.loop}/{self.config.max_loops}  load {row.load_target}/s "
            f"(answered {row.load_answered:.0f}/s)  last {last}  time-outs {time_outs}/{self.config.max_time_outs}"
        )
        show_progress(line, row, self.progress, 100)
