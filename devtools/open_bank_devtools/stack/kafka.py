"""Apache Kafka for the local stack: one KRaft node (broker and controller), run with the JDK.

The broker's jars and their dependencies come from Maven Central through Maven
(``mvn dependency:copy-dependencies`` on a small generated POM) into a cache
outside the repository (``$OPEN_BANK_CACHE``, default ``~/.cache/open-bank``),
once per version. The node's configuration and log directory live in the
stack's directory, so ``stack down`` then ``stack up`` keeps topics, committed
offsets and data. The settings that make one node fast for tests (no initial
rebalance delay, replication factor 1 for internal topics) belong here, not
to the handler.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from command_handler.errors import OperatorError

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"  # the version Kafka's own log4j dependencies have; adds the SLF4J binding Kafka leaves out
MAIN_CLASS = "kafka.Kafka"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.open-bank</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: WARN
      - name: state.change.logger
        level: WARN
"""


class KafkaError(OperatorError):
    """The local Apache Kafka could not be fetched or set up; the message says why."""


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "open-bank"
    return Path(os.environ.get("OPEN_BANK_CACHE", str(default)))


def ensure_jars(version: str = KAFKA_VERSION, out: Callable[[str], None] = print) -> Path:
    """The folder of the broker's jars, fetched from Maven Central with Maven when not cached yet."""
    home = cache_dir() / f"kafka-{version}"
    libs = home / "libs"
    done = home / ".complete"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None or shutil.which("java") is None:
        raise KafkaError("Apache Kafka needs a JDK and Maven: scripts/setup.sh installs them from Debian's packages")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
    out(f"broker: fetching Apache Kafka {version} jars from Maven Central into {libs} (once)")
    shutil.rmtree(libs, ignore_errors=True)
    result = subprocess.run(
        [mvn, "-B", "-q", "dependency:copy-dependencies", f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
        cwd=home,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        raise KafkaError(f"Maven could not fetch Apache Kafka {version}:\n{(result.stdout + result.stderr)[-2000:]}")
    done.write_text(version + "\n")
    return libs


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener with mutual authentication: PEM files the caller provides."""

    port: int
    ca: Path  # CA that signed the clients' certificates (the truststore)
    certificate: Path  # the broker's certificate chain (PEM)
    key: Path  # the broker's private key (PEM, PKCS#8: Kafka's PEM keystore reads no other form)


@dataclass(frozen=True)
class KafkaNode:
    directory: Path  # $STACK_DIR/kafka: server.properties, log4j2.yaml, data/
    host: str
    port: int
    controller_port: int
    tls: TlsListener | None = None
    version: str = KAFKA_VERSION

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def properties_path(self) -> Path:
        return self.directory / "server.properties"

    def properties(self) -> dict[str, str]:
        listeners = [f"PLAINTEXT://{self.host}:{self.port}", f"CONTROLLER://{self.host}:{self.controller_port}"]
        advertised = [f"PLAINTEXT://{self.host}:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data.resolve()),
            # one node: internal topics cannot have more replicas, and no one waits for others to join
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "12",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "12",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.partitions": "1",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if self.tls is not None:
            listeners.append(f"SSL://{self.host}:{self.tls.port}")
            advertised.append(f"SSL://{self.host}:{self.tls.port}")
            protocols.append("SSL:SSL")
            props.update(
                {
                    "ssl.keystore.type": "PEM",
                    "ssl.keystore.certificate.chain": _pem_value(self.tls.certificate),
                    "ssl.keystore.key": _pem_value(self.tls.key),
                    "ssl.truststore.type": "PEM",
                    "ssl.truststore.certificates": _pem_value(self.tls.ca),
                    "ssl.client.auth": "required",
                }
            )
        props["listeners"] = ",".join(listeners)
        props["advertised.listeners"] = ",".join(advertised)
        props["listener.security.protocol.map"] = ",".join(protocols)
        return props

    def prepare(self, out: Callable[[str], None] = print) -> list[str]:
        """Write the configuration, format the log directory on first use; the command line to start the node."""
        libs = ensure_jars(self.version, out)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        self.properties_path.chmod(0o600)
        (self.directory / "log4j2.yaml").write_text(_LOG4J2)
        classpath = f"{libs}/*"
        if not (self.data / "meta.properties").exists():
            cluster_id = new_cluster_id()
            result = subprocess.run(
                ["java", "-cp", classpath, "kafka.tools.StorageTool", "format", "--cluster-id", cluster_id,
                 "--config", str(self.properties_path)],
                capture_output=True, text=True, cwd=self.directory,
            )  # fmt: skip
            if result.returncode != 0:
                raise KafkaError(f"formatting {self.data} failed: {(result.stdout + result.stderr)[-2000:]}")
            out(f"broker: formatted a new KRaft log directory {self.data}")
        return [
            "java",
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.directory.resolve() / 'log4j2.yaml'}",
            "-cp",
            classpath,
            MAIN_CLASS,
            str(self.properties_path.resolve()),
        ]

    @property
    def marker(self) -> str:
        """A string of the node's command line that names this very node."""
        return f"{MAIN_CLASS} {self.properties_path.resolve()}"


def new_cluster_id() -> str:
    """A random KRaft cluster id (16 bytes, URL-safe base64), never starting with "-", which the storage
    tool's argument parser would take for an option (as Kafka's own random-uuid avoids too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _pem_value(path: Path) -> str:
    """A PEM file as one line of a properties file (newlines escaped)."""
    return path.read_text().strip().replace("\n", "\\n")
