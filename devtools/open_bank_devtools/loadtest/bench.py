"""Throughput benchmark: the handler end to end against the database's own ceiling.

1. A database of its own (``balancedb_bench``) with pre-created accounts, topics
   of its own, and a handler process started for the run.
2. A fixed number of ConfirmMoneyTransfer commands produced as fast as possible;
   commands per second handled end to end (first send to last answer), answer
   latency percentiles, the handler's CPU and peak RSS.
3. pgbench on the same Postgres with a transaction script equivalent to one
   transfer (claim the cmt row with its source, lock both accounts in IBAN order, debit, credit,
   store the two BalanceChanged rows; READ COMMITTED like the handler) and as
   many connections as the handler uses for its transactions (one worker).
4. The ratio handler / pgbench.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, text

from command_handler.adapters import migrations
from command_handler.bootstrap import synchronize
from command_handler.config import Settings, load_settings
from command_handler.domain.iban import iban_for
from command_handler.topology import topic_specs
from open_bank_devtools.health import free_port, wait_ready
from open_bank_devtools.loadtest.bank_client import Answer, BankClient
from open_bank_devtools.loadtest.report import percentile

BENCH_DB = "balancedb_bench"
HANDLER_CONNECTIONS = 1  # the handler's consumer loop runs one transaction at a time

PGBENCH_SCRIPT = """\\set a random(:first, :last)
\\set b random(:first, :last)
BEGIN;
INSERT INTO cmt (uuid, source_topic, source_partition, source_offset) VALUES (gen_random_uuid(), 'pgbench', 0, 0)
RETURNING uuid AS claimed \\gset
SELECT amount, token, lmt FROM balance WHERE balance_id IN (:a, :b) ORDER BY iban FOR UPDATE;
UPDATE balance SET amount = amount - 100 WHERE balance_id = :a;
UPDATE balance SET amount = amount + 100 WHERE balance_id = :b;
INSERT INTO cmt_balance_changed (cmt_uuid, seq, username, iban, new_balance, changed_by, from_to, description)
VALUES (:claimed, 0, 'bench', 'NL00OPEN0000000000', 0, -100, 'x', 'pgbench'),
       (:claimed, 1, 'bench', 'NL00OPEN0000000001', 0, 100, 'x', 'pgbench');
COMMIT;
"""


@dataclass
class BenchResult:
    transfers: int
    accounts: int
    seconds: float
    commands_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    confirmed: int
    handler_cpu_percent: float
    handler_cpu_us_per_command: float
    handler_peak_rss_mib: float
    # µs of CPU per command by thread name: the main (consumer) thread, the other Python threads ("python"),
    # librdkafka's ("rdk:main", "rdk:broker…", ...)
    handler_cpu_us_by_thread: dict[str, float]
    pgbench_connections: int
    pgbench_tps: float
    ratio: float
    handler_python: str = ""  # the interpreter that ran the handler (scripts/bench.sh: the product's own)

    def lines(self) -> list[str]:
        return [
            f"handler: {self.transfers} transfers in {self.seconds:.2f} s = {self.commands_per_s:.0f} commands/s "
            f"end to end ({self.confirmed} confirmed)",
            f"handler: answer latency p50 {self.latency_p50_ms:.0f} ms, p95 {self.latency_p95_ms:.0f} ms, "
            f"p99 {self.latency_p99_ms:.0f} ms (all commands queued at once)",
            f"handler: CPU {self.handler_cpu_percent:.0f}% of one core while it ran (user + system); µs per "
            "command by thread: " + ", ".join(f"{name} {us:.1f}" for name, us in self.handler_cpu_us_by_thread.items()),
            f"pgbench: {self.pgbench_tps:.0f} transfers/s ({self.pgbench_connections} connection, one transfer per "
            "transaction, same statements and isolation)",
            # the four figures the benchmark is for, last
            f"commands/s: {self.commands_per_s:.0f}",
            f"handler CPU per command: {self.handler_cpu_us_per_command:.1f} µs (user + system)",
            f"handler peak RSS: {self.handler_peak_rss_mib:.1f} MiB",
            f"ratio handler/pgbench: {self.ratio:.2f}",
        ]


class PeakSampler:
    """Samples a process's RSS every 50 ms; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(1)
        return self.peak / 2**20


class Profiler:
    """py-spy sampling a running process (``--nonblocking``: the process is never paused) until ``stop``."""

    def __init__(self, pid: int, path: Path, rate_hz: int = 200) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.path = path
        self.process = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--nonblocking", "--rate", str(rate_hz), "--format", "raw",
             "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(0.5)  # attached before the load starts (py-spy has no "ready" signal)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        if not self.path.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.strip()}")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of a process: its name and CPU seconds so far (user + system)."""
    threads = {}
    for t in psutil.Process(pid).threads():
        try:
            name = Path(f"/proc/{pid}/task/{t.id}/comm").read_text().strip()
        except OSError:
            continue  # ended meanwhile
        threads[t.id] = ("main" if t.id == pid else name, t.user_time + t.system_time)
    return threads


def cpu_by_name(
    pid: int, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between two ``thread_cpu`` snapshots, per thread name, most first (librdkafka's
    broker threads together; a thread that ended meanwhile is not counted)."""
    spent: dict[str, float] = {}
    for tid, (name, seconds) in after.items():
        key = "rdk:broker*" if name.startswith("rdk:broker") else name
        spent[key] = spent.get(key, 0.0) + seconds - before.get(tid, (name, 0.0))[1]
    return dict(sorted(spent.items(), key=lambda item: -item[1]))


def bench_environment(suffix: str) -> dict[str, str]:
    return {
        **os.environ,
        "DB_NAME": BENCH_DB,
        **{spec.env: f"bench_{spec.role}_{suffix}" for spec in topic_specs()},
        "KAFKA_GROUP_ID": f"bench-{suffix}",
        "STATS_INTERVAL_S": "5",
        "HEALTH_PORT": str(free_port()),
    }


def prepare_database(settings: Settings, accounts: int) -> tuple[int, int, list[tuple[str, str, str]]]:
    """Fresh bench database with ``accounts`` rich accounts; returns their balance_id range and rows."""
    db = settings.database
    migrations.fresh_database(db)
    rows = [(f"bench{i}", iban_for(f"{i + 1:010d}"), f"{i:020d}") for i in range(accounts)]
    engine = create_engine(db.url())
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO balance (username, iban, token, amount) VALUES (:u, :i, :t, 1000000000000)"),
            [{"u": u, "i": i, "t": t} for u, i, t in rows],
        )
        first, last = conn.execute(
            text("SELECT min(balance_id), max(balance_id) FROM balance WHERE username LIKE 'bench%'")
        ).one()
    engine.dispose()
    return int(first), int(last), rows


def run_pgbench(settings: Settings, first: int, last: int, connections: int, seconds: int) -> float:
    db = settings.database
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(PGBENCH_SCRIPT)
        script = f.name
    try:
        result = subprocess.run(
            ["pgbench", "-n", "-M", "prepared", "-h", db.host, "-p", str(db.port), "-U", db.user,
             "-c", str(connections), "-j", str(connections), "-T", str(seconds), "-f", script,
             "-D", f"first={first}", "-D", f"last={last}", db.name],
            env={**os.environ, "PGPASSWORD": db.password, "PGSSLMODE": db.sslmode},
            capture_output=True, text=True, timeout=seconds + 60,
        )  # fmt: skip
    finally:
        os.unlink(script)
    match = re.search(r"tps = ([0-9.]+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return float(match.group(1))


def run_bench(
    transfers: int = 20_000,
    accounts: int = 1_000,
    pgbench_seconds: int = 15,
    results_dir: Path = Path("results"),
    out: bool = True,
    profile: Path | None = None,
    handler_python: str | None = None,
) -> BenchResult:
    """``profile``: where py-spy writes the handler's profile of the timed part (collapsed stacks, ``-f raw``).
    ``handler_python``: the interpreter that runs the handler (default this one; scripts/bench.sh gives the
    product's own environment, so the tools' dependencies are not in the handler's memory)."""
    suffix = uuid.uuid4().hex[:8]
    env = bench_environment(suffix)
    settings = load_settings(env)
    say = print if out else (lambda *a, **k: None)
    say(f"bench: preparing {accounts} accounts in {BENCH_DB} and topics *_{suffix}")
    first, last, rows = prepare_database(settings, accounts)
    synchronize(settings)
    results_dir.mkdir(parents=True, exist_ok=True)
    log_path = results_dir / f"bench-handler-{suffix}.log"
    python = handler_python or sys.executable
    with open(log_path, "w") as log_file:
        handler = subprocess.Popen(
            [python, "-m", "command_handler", "run"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_ready(int(env["HEALTH_PORT"]), 120, running=lambda: handler.poll() is None)
        except (RuntimeError, TimeoutError) as err:
            raise RuntimeError(f"{err}; see {log_path}") from err
        say(f"bench: {transfers} transfers as fast as possible")
        result = _drive(settings, handler.pid, rows, transfers, profile)
    finally:
        handler.terminate()
        handler.wait(60)
    say(f"bench: pgbench for {pgbench_seconds} s")
    tps = run_pgbench(settings, first, last, HANDLER_CONNECTIONS, pgbench_seconds)
    bench = BenchResult(
        **result,
        pgbench_connections=HANDLER_CONNECTIONS,
        pgbench_tps=tps,
        ratio=result["commands_per_s"] / tps,
        handler_python=python,
    )
    path = results_dir / f"bench-{datetime.now().strftime('%Y-%m-%d-%H-%M')}-{suffix}.json"
    path.write_text(json.dumps(asdict(bench), indent=2) + "\n")
    for line in bench.lines():
        say(line)
    say(f"bench: results in {path}, handler log in {log_path}")
    return bench


def _drive(
    settings: Settings, pid: int, rows: list[tuple[str, str, str]], transfers: int, profile: Path | None = None
) -> dict[str, Any]:
    sent_at: dict[uuid.UUID, float] = {}
    latencies: list[float] = []
    confirmed = [0]
    last_answer = [0.0]
    done = threading.Event()
    lock = threading.Lock()

    def on_answer(topic: str, answer: Answer) -> None:
        if topic != settings.topics.money_transfer_feedback:
            return
        with lock:
            started = sent_at.pop(uuid.UUID(bytes=answer.value["id"]), None)
            if started is None:
                return
            latencies.append((answer.received - started) * 1000)
            confirmed[0] += answer.record == "MoneyTransferConfirmed"
            last_answer[0] = answer.received
            if len(latencies) == transfers:
                done.set()

    client = BankClient(settings, linger_ms=5, keep_all=False, on_answer=on_answer)
    commands = []  # serialized up front, so the client's Avro encoding does not limit the rate
    for n in range(transfers):
        username, frm, token = rows[n % len(rows)]
        to = rows[(n * 7 + 1) % len(rows)][1]
        command_id = uuid.uuid4()
        value = client.encode_transfer(command_id, token, 100, frm, to, "bench")
        commands.append((command_id, username.encode(), value))
    process = psutil.Process(pid)
    peak = PeakSampler(pid)
    profiler = Profiler(pid, profile) if profile is not None else None
    threads_before = thread_cpu(pid)
    cpu_before = sum(process.cpu_times()[:2])
    start = time.monotonic()
    for command_id, key, data in commands:
        with lock:
            sent_at[command_id] = time.monotonic()
        client.send_raw(key, data)
    client.flush()
    if not done.wait(600):
        raise RuntimeError(f"only {len(latencies)} of {transfers} transfers answered")
    elapsed = last_answer[0] - start
    cpu_s = sum(process.cpu_times()[:2]) - cpu_before
    by_thread = cpu_by_name(pid, threads_before, thread_cpu(pid))
    if profiler is not None:
        profiler.stop()
    rss = peak.stop()
    client.close()
    return {
        "transfers": transfers,
        "accounts": len(rows),
        "seconds": elapsed,
        "commands_per_s": transfers / elapsed,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "latency_p99_ms": percentile(latencies, 99),
        "confirmed": confirmed[0],
        "handler_cpu_percent": 100 * cpu_s / elapsed,
        "handler_cpu_us_per_command": 1e6 * cpu_s / transfers,
        "handler_peak_rss_mib": rss,
        "handler_cpu_us_by_thread": {name: 1e6 * seconds / transfers for name, seconds in by_thread.items()},
    }
