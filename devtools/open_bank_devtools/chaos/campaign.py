"""``command-handler chaos``: a bounded, self-stopping fault campaign on a local stack of its own.

Three handler processes share one consumer group on Apache Kafka and the stack's
own PostgreSQL, under a steady load of account creations and transfers (with
invalid tokens, insufficient funds, and duplicates re-sent under other keys, so
through other partitions and other handlers), while a schedule of faults runs:
kill -9 of a handler (restarted), SIGSTOP past the session timeout then SIGCONT,
PostgreSQL stopped (immediate) and started, the database read-only, the registry
down, the broker restarted, bursts of hostile records. Then the load stops, the
handlers get the time to answer everything, stop on SIGTERM, and ``audit`` judges
what came out. The last line is the audit's; the exit status is 0 only when
every figure that must be 0 is.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.schema_registry import Schema

from command_handler.bootstrap import synchronize
from command_handler.config import Settings, load_settings
from open_bank_devtools.chaos import audit, fuzz
from open_bank_devtools.health import free_port, wait_ready
from open_bank_devtools.loadtest.bank_client import BankClient
from open_bank_devtools.stack.local_stack import LocalStack, StackConfig

HANDLERS = 3
SESSION_TIMEOUT_MS = 6000


FAULT_KINDS = ("kill", "freeze", "db-stop", "db-read-only", "registry-down", "broker-restart", "hostile-burst")


@dataclass(frozen=True)
class Fault:
    at_s: float
    kind: str  # one of FAULT_KINDS
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (known: {', '.join(FAULT_KINDS)})")


@dataclass(frozen=True)
class Preset:
    name: str
    duration_s: float
    rate: float  # commands per second of the load
    accounts: int
    burst: int  # hostile records per burst
    faults: tuple[Fault, ...]


def _ci() -> Preset:
    return Preset(
        "ci",
        duration_s=150,
        rate=60,
        accounts=30,
        burst=120,
        faults=(
            Fault(10, "kill"),
            Fault(22, "freeze", 12),
            Fault(42, "db-stop", 8),
            Fault(58, "db-read-only", 8),
            Fault(74, "registry-down", 10),
            Fault(77, "hostile-burst"),
            Fault(92, "broker-restart"),
            Fault(110, "hostile-burst"),
            Fault(122, "kill"),
            Fault(132, "hostile-burst"),
        ),
    )


def _full() -> Preset:
    kills = tuple(Fault(float(t), "kill") for t in range(8, 460, 20))  # 23 kills
    bursts = tuple(Fault(float(t), "hostile-burst") for t in range(25, 460, 40))  # 11 bursts
    return Preset(
        "full",
        duration_s=480,
        rate=100,
        accounts=60,
        burst=100,
        faults=tuple(
            sorted(
                (
                    *kills,
                    *bursts,
                    Fault(40, "freeze", 12),
                    Fault(100, "db-stop", 30),
                    Fault(160, "registry-down", 30),
                    Fault(170, "hostile-burst"),
                    Fault(200, "freeze", 15),
                    Fault(250, "db-read-only", 20),
                    Fault(300, "broker-restart"),
                    Fault(345, "freeze", 12),
                ),
                key=lambda f: f.at_s,
            )
        ),
    )


PRESETS: dict[str, Callable[[], Preset]] = {"ci": _ci, "full": _full}


class Handler:
    """One handler process of the campaign, restarted when it was killed (or, a failure, when it exited)."""

    def __init__(self, index: int, env: dict[str, str], directory: Path) -> None:
        self.name = f"handler-{index}"
        self.env = env
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.starts = 0
        self.unexpected_exits: list[int] = []
        self.expect_exit = False

    def start(self) -> None:
        self.health_port = free_port()
        self.starts += 1
        log = open(self.directory / f"{self.name}.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "command_handler", "run"],
            env={**self.env, "HEALTH_PORT": str(self.health_port)},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        log.close()
        self.expect_exit = False

    def wait_ready(self, timeout_s: float = 120) -> None:
        process = self.process
        assert process is not None
        wait_ready(self.health_port, timeout_s, running=lambda: process.poll() is None)

    def signal(self, signum: int) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.pid

    def check(self) -> None:
        """Restart the process if it exited on its own (counted: the handler must never stop)."""
        if self.process is not None and not self.expect_exit and self.process.poll() is not None:
            self.unexpected_exits.append(self.process.returncode)
            self.start()

    def stop(self, timeout_s: float = 30) -> tuple[int | None, float]:
        """SIGTERM; (exit status, seconds it took)."""
        assert self.process is not None
        self.expect_exit = True
        started = time.monotonic()
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)  # its threads' stacks into its log, to see where it hangs
            time.sleep(1)
            self.process.kill()
            self.process.wait(10)
            code = None
        return code, time.monotonic() - started


@dataclass
class Account:
    username: str
    iban: str
    token: str


class Load:
    """Steady commands at ``rate`` per second; remembers the valid ones the broker acknowledged."""

    def __init__(self, settings: Settings, client: BankClient, accounts: list[Account], rate: float, seed: int) -> None:
        self.settings = settings
        self.client = client
        self.accounts = accounts
        self.rate = rate
        self.rng = random.Random(seed)
        self.producer = Producer(
            {
                **settings.kafka.common(),
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 600_000,  # ride out a broker restart
                # the corpus's records with huge keys or headers: over the handler's limit, within the broker's
                "compression.type": "lz4",
                "message.max.bytes": 2_000_000,
            }
        )
        self.acked: set[uuid.UUID] = set()
        self.failed = 0
        self.sent_records = 0
        self._history: list[tuple[uuid.UUID, bytes]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.topic = settings.topics.commands

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.producer.flush(120)

    def send(self, key: bytes | None, value: bytes | None, command_id: uuid.UUID | None, headers: tuple = ()) -> None:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            with self._lock:
                if err is not None:
                    self.failed += 1
                elif command_id is not None:
                    self.acked.add(command_id)

        while True:
            try:
                self.producer.produce(self.topic, value, key, headers=list(headers), on_delivery=delivered)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.sent_records += 1
        self.producer.poll(0)

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        n = 0
        while not self._stop.is_set():
            n += 1
            self._one(n)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _one(self, n: int) -> None:
        rng = self.rng
        roll = rng.random()
        command_id = uuid.uuid4()
        source, target = rng.sample(self.accounts, 2)
        description = f"chaos {n}"
        if roll < 0.05 and self._history:  # a client's retry, under another key: another partition
            old_id, value = rng.choice(self._history)
            self.send(f"retry-{n}".encode(), value, old_id)
            return
        if roll < 0.10:
            value = self.client.encode("ConfirmAccountCreation", {"id": command_id.bytes, "username": f"chaos-{n}"})
            key = f"chaos-{n}"
        elif roll < 0.25:
            value = self.client.encode_transfer(
                command_id, "", rng.randint(1, 10_000), "cash", target.iban, description
            )
            key = target.username
        elif roll < 0.33:
            value = self.client.encode_transfer(
                command_id, "wrong-" + source.token, rng.randint(1, 100), source.iban, target.iban, description
            )
            key = source.username
        elif roll < 0.40:
            value = self.client.encode_transfer(
                command_id, source.token, 10**12 + rng.randint(0, 10**6), source.iban, target.iban, description
            )
            key = source.username
        else:
            value = self.client.encode_transfer(
                command_id, source.token, rng.randint(1, 3_000), source.iban, target.iban, description
            )
            key = source.username
        self.send(key.encode(), value, command_id)
        if len(self._history) < 5000:
            self._history.append((command_id, value))


@dataclass
class Scene:
    """What the faults act on."""

    stack: LocalStack
    settings: Settings
    load: Load
    hostile: list[fuzz.Hostile]
    next_hostile: int = 0  # where the next burst starts in ``hostile``


class Campaign:
    def __init__(
        self,
        preset: Preset,
        directory: Path | None = None,
        transactions: bool = False,
        seed: int = 20261123,
        out: Callable[[str], None] = print,
    ) -> None:
        self.preset = preset
        self.directory = directory or Path(tempfile.mkdtemp(prefix="open-bank-chaos-"))
        self.transactions = transactions
        self.seed = seed
        self.out = out
        self.rng = random.Random(seed)
        self.started = 0.0
        self.faults_done = 0
        self.faults_failed: list[str] = []
        self.handlers: list[Handler] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()  # the run ends (SIGTERM, or done): faults start nothing more
        self._faults: list[threading.Thread] = []

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started if self.started else 0.0
        self.out(f"chaos: [{elapsed:6.1f}s] {text}")

    # -- the run ---------------------------------------------------------------------

    def run(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = StackConfig(
            directory=self.directory / "stack",
            broker="kafka",
            broker_port=free_port(),
            controller_port=free_port(),
            registry_port=free_port(),
            registry_health_port=free_port(),
            db_port=free_port(),
        )
        stack = LocalStack(config, load_settings({}), out=lambda line: self.out(f"[stack] {line}"))
        # SIGTERM (a CI time-out, kill) ends the run through the finally below: no stack left running
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        try:
            stack.up(timeout_s=180, fresh=True)
            return self._run(stack)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
            self.stopping.set()  # fault threads still running start nothing more
            for thread in self._faults:
                thread.join(60)  # one in the middle of a start (the broker's) finishes it first
            for handler in self.handlers:
                if handler.process is not None and handler.process.poll() is None:
                    handler.process.kill()
            stack.down()

    def _run(self, stack: LocalStack) -> int:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/root"),
            **stack.environment(),
            "KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            "SCHEMA_UNKNOWN_GRACE_S": "3",
            "STATS_INTERVAL_S": "10",
            "HEALTH_HOST": "127.0.0.1",
            "KAFKA_TRANSACTIONS": "true" if self.transactions else "false",
        }
        settings = load_settings(env)
        synchronize(settings)
        self.handlers = [Handler(i, env, self.directory) for i in range(1, HANDLERS + 1)]
        for handler in self.handlers:
            handler.start()
        for handler in self.handlers:
            handler.wait_ready()
        mode = "Kafka transactions" if self.transactions else "at-least-once outputs"
        self.say(f"{HANDLERS} handlers ready ({mode}); stack and logs in {self.directory}")
        before = audit.balances(settings)
        client = BankClient(settings)  # keeps every answer: the settling wait counts them
        try:
            accounts = self._open_accounts(client)
            hostile = self._corpus(client, accounts[0])
            load = Load(settings, client, accounts, self.preset.rate, self.seed)
            self.started = time.monotonic()
            load.start()
            self.say(f"load of {self.preset.rate:g} commands/s started; {len(self.preset.faults)} faults scheduled")
            self._schedule(Scene(stack, settings, load, hostile))
            load.stop()
            self.say(
                f"load stopped: {len(load.acked)} valid commands acknowledged by the broker, "
                f"{load.sent_records} records in all, {load.failed} not delivered"
            )
            self._settle(client, load.acked)
            sent = set(load.acked)
        finally:
            client.close()
        stops = [(h.name, *h.stop()) for h in self.handlers]
        for name, code, took in stops:
            self.say(f"{name}: SIGTERM -> exit {code} in {took:.1f}s")
        unexpected = {h.name: h.unexpected_exits for h in self.handlers if h.unexpected_exits}
        findings = audit.audit(settings, client.registry, sent, before)
        self.say(
            f"{findings.records} command records, {findings.dead_lettered} dead letters, "
            f"{findings.unaccounted} records neither answered nor dead-lettered, "
            f"{findings.duplicated_outputs} duplicated outputs"
            + (" (must be 0 with transactions)" if self.transactions else " (at-least-once: allowed)")
        )
        for what, examples in findings.examples.items():
            for example in examples:
                self.say(f"{what}: {example}")
        if unexpected:
            self.say(f"handlers exited on their own: {unexpected}")
        bad_stops = [name for name, code, _ in stops if code != 0]
        if bad_stops:
            self.say(f"handlers that did not exit 0 on SIGTERM: {bad_stops}")
        scheduled = len(self.preset.faults)
        if self.faults_failed or self.faults_done != scheduled:
            self.say(f"faults injected: {self.faults_done} of {scheduled}; failed: {self.faults_failed or 'none'}")
        self.out(findings.line(self.faults_done, scheduled))
        injected = not self.faults_failed and self.faults_done == scheduled
        ok = findings.clean(exactly_once=self.transactions) and not unexpected and not bad_stops and injected
        return 0 if ok else 1

    def _open_accounts(self, client: BankClient) -> list[Account]:
        ids = {}
        for i in range(self.preset.accounts):
            username = f"chaos-user-{i}"
            command_id = client.open_account(username)
            client.watched_ids.add(command_id)
            ids[command_id] = username
        client.flush()
        accounts = []
        for command_id, username in ids.items():
            answer = client.wait_for(command_id, 120)
            accounts.append(Account(username, answer.value["iban"], answer.value["token"]))
        return accounts

    def _corpus(self, client: BankClient, target: Account) -> list[fuzz.Hostile]:
        foreign = Schema(
            '{"type":"record","name":"Foreign","namespace":"com.example","fields":[{"name":"x","type":"long"}]}',
            "AVRO",
        )
        foreign_id = client.registry.register_schema("chaos-foreign-value", foreign)
        t = client.topics
        output = client.registry.get_latest_version(  # one of the handler's output records
            f"{t.account_creation_feedback}-nl.openweb.data.AccountCreationConfirmed"
        )
        bursts = sum(1 for f in self.preset.faults if f.kind == "hostile-burst")
        return fuzz.corpus(
            self.seed,
            max(bursts * self.preset.burst, 1),
            client.encode,
            foreign_id,
            output.schema_id or 0,
            fuzz.Target(target.username, target.iban, target.token),
        )

    def _settle(self, client: BankClient, acked: set[uuid.UUID], timeout_s: float = 240) -> None:
        """Until every acknowledged command has an answer (or the time is up: the audit says what is lost)."""
        client.watched_ids.update(acked)
        deadline = time.monotonic() + timeout_s
        missing = len(acked)
        while time.monotonic() < deadline:
            for handler in self.handlers:
                handler.check()
            with client._lock:
                missing = sum(1 for i in acked if not client.feedback.get(i))
            if not missing:
                break
            time.sleep(1)
        self.say(f"settled: {len(acked) - missing} of {len(acked)} answered as the client saw it")
        time.sleep(3)  # outputs of redeliveries still on their way

    # -- faults -----------------------------------------------------------------------

    def _schedule(self, scene: Scene) -> None:
        pending = list(self.preset.faults)
        while time.monotonic() - self.started < self.preset.duration_s:
            for handler in self.handlers:
                with self._lock:
                    handler.check()
            now = time.monotonic() - self.started
            while pending and pending[0].at_s <= now:
                fault = pending.pop(0)
                thread = threading.Thread(target=self._inject, args=(fault, scene), daemon=True)
                thread.start()
                self._faults.append(thread)
            time.sleep(0.2)
        for thread in self._faults:
            thread.join(120)

    def _injector(self, kind: str) -> Callable[[Fault, Scene], None]:
        return {
            "kill": self._kill,
            "freeze": self._freeze,
            "db-stop": self._db_stop,
            "db-read-only": self._db_read_only,
            "registry-down": self._registry_down,
            "broker-restart": self._broker_restart,
            "hostile-burst": self._hostile_burst,
        }[kind]

    def _inject(self, fault: Fault, scene: Scene) -> None:
        try:
            self._injector(fault.kind)(fault, scene)
            with self._lock:
                self.faults_done += 1
        except Exception as err:  # the campaign goes on, and fails: its scenario did not happen
            failure = f"{fault.kind} at {fault.at_s:g}s: {type(err).__name__}: {err}"
            with self._lock:
                self.faults_failed.append(failure)
            self.say(f"fault {failure}")

    def _wait(self, seconds: float) -> bool:
        """Sleep through a fault's duration; False when the run is ending meanwhile (then the fault's
        second half, a restart, is not done: the run's clean-up stops everything)."""
        return not self.stopping.wait(seconds)

    def _pick(self) -> Handler:
        with self._lock:
            return self.rng.choice(self.handlers)

    def _kill(self, fault: Fault, scene: Scene) -> None:
        handler = self._pick()
        with self._lock:
            handler.expect_exit = True
            pid = handler.signal(signal.SIGKILL)
            assert handler.process is not None
            handler.process.wait(10)
        self.say(f"kill -9 {handler.name} (pid {pid})")
        if not self._wait(1):
            return
        with self._lock:
            handler.start()
        self.say(f"{handler.name} restarted")

    def _freeze(self, fault: Fault, scene: Scene) -> None:
        handler = self._pick()
        with self._lock:
            handler.expect_exit = True  # a frozen process is not restarted
            pid = handler.signal(signal.SIGSTOP)
        self.say(f"SIGSTOP {handler.name} (pid {pid}) for {fault.seconds:g}s (session timeout {SESSION_TIMEOUT_MS}ms)")
        self._wait(fault.seconds)
        with self._lock:
            handler.signal(signal.SIGCONT)
            handler.expect_exit = False
        self.say(f"SIGCONT {handler.name}: a zombie wakes after its partitions moved")

    def _db_stop(self, fault: Fault, scene: Scene) -> None:
        cluster = scene.stack.cluster
        assert cluster is not None
        cluster.stop(mode="immediate")
        self.say(f"PostgreSQL stopped (immediate) for {fault.seconds:g}s")
        if not self._wait(fault.seconds):
            return
        cluster.start()
        self.say("PostgreSQL started")

    def _db_read_only(self, fault: Fault, scene: Scene) -> None:
        name = scene.settings.database.name
        with psycopg.connect(scene.stack.database.admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            _cut(admin, name)
            self.say(f"database read-only for {fault.seconds:g}s (a standby after a failover)")
            self._wait(fault.seconds)
            admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
            _cut(admin, name)
        self.say("database writable again")

    def _registry_down(self, fault: Fault, scene: Scene) -> None:
        scene.stack.stop_service("registry")
        self.say(f"registry down for {fault.seconds:g}s")
        if not self._wait(fault.seconds):
            return
        scene.stack.start_service("registry")
        self.say("registry started")

    def _broker_restart(self, fault: Fault, scene: Scene) -> None:
        scene.stack.stop_service("broker")
        self.say("broker stopped")
        if self.stopping.is_set():
            return
        scene.stack.start_service("broker")
        self.say("broker started again")

    def _hostile_burst(self, fault: Fault, scene: Scene) -> None:
        with self._lock:
            start = scene.next_hostile
            scene.next_hostile += self.preset.burst
        burst = scene.hostile[start : start + self.preset.burst]
        for record in burst:
            scene.load.send(record.key, record.value, None, record.headers)
        kinds = len({r.kind for r in burst})
        self.say(f"hostile burst: {len(burst)} records of {kinds} kinds")


def _cut(admin: psycopg.Connection, database: str) -> None:
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    )
