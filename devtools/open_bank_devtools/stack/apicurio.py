"""Apicurio Registry for the local stack: a real Schema Registry, with Confluent's REST API at /apis/ccompat/v7.

Its ready-to-run distribution (``io.apicurio:apicurio-registry-app:<version>:tar.gz:all``, a Quarkus
application) comes from Maven Central through Maven into the stack's cache beside Kafka's jars
(``$OPEN_BANK_CACHE``, default ``~/.cache/open-bank``), once per version, and is unpacked there. It runs
as ``java -jar quarkus-run.jar`` with a JDK of version 21 or newer found on the machine (machines of
this project's kind carry Temurin 25 beside the default JDK 17). Its state is in the stack's
PostgreSQL (Apicurio's SQL storage), so ``stack down`` then ``stack up`` keeps every schema id.
It listens on loopback only: the API on the stack's registry port, health (``/health/ready``) on a
management port of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from command_handler.errors import OperatorError
from open_bank_devtools.stack.kafka import cache_dir

APICURIO_VERSION = "3.3.3"
MIN_JAVA = 21
CCOMPAT_PATH = "/apis/ccompat/v7"  # where Confluent's clients find the registry
JAVA_HOME_VARIABLE = "STACK_REGISTRY_JAVA_HOME"


class ApicurioError(OperatorError):
    """Apicurio Registry could not be fetched or set up; the message says why."""


def artifact(version: str = APICURIO_VERSION) -> str:
    return f"io.apicurio:apicurio-registry-app:{version}:tar.gz:all"


def ensure_distribution(version: str = APICURIO_VERSION, out: Callable[[str], None] = print) -> Path:
    """The folder holding ``quarkus-run.jar``, fetched from Maven Central with Maven when not cached yet."""
    home = cache_dir() / f"apicurio-registry-{version}"
    app = home / "app"
    done = home / ".complete"
    if done.exists() and (app / "quarkus-run.jar").exists():
        return app
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ApicurioError(
            "Apicurio Registry is fetched with Maven: scripts/setup.sh installs it from Debian's packages"
        )
    download = home / "download"
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir(parents=True)
    out(f"registry: fetching Apicurio Registry {version} (about 150 MB) from Maven Central into {home} (once)")
    result = subprocess.run(
        [mvn, "-B", "-q", "dependency:copy", f"-Dartifact={artifact(version)}", f"-DoutputDirectory={download}"],
        cwd=home,
        capture_output=True,
        text=True,
    )
    archives = list(download.glob("*.tar.gz"))
    if result.returncode != 0 or len(archives) != 1:
        raise ApicurioError(f"Maven could not fetch {artifact(version)}:\n{(result.stdout + result.stderr)[-2000:]}")
    shutil.rmtree(app, ignore_errors=True)
    app.mkdir()
    with tarfile.open(archives[0]) as archive:
        archive.extractall(app, filter="data")
    if not (app / "quarkus-run.jar").exists():
        raise ApicurioError(f"{archives[0].name} holds no quarkus-run.jar")
    shutil.rmtree(download)  # Maven's local repository keeps the archive; the unpacked copy is what runs
    done.write_text(version + "\n")
    return app


def java_version(home: Path) -> int | None:
    """The feature version of the JDK or JRE in ``home`` (from its ``release`` file), or None."""
    try:
        release = (home / "release").read_text()
    except OSError:
        return None
    found = re.search(r'^JAVA_VERSION="(\d+)', release, re.MULTILINE)
    return int(found.group(1)) if found else None


def find_java(minimum: int = MIN_JAVA, env: dict[str, str] | None = None) -> Path:
    """The ``java`` of the newest JDK on the machine with at least version ``minimum``.

    Looked at: ``$STACK_REGISTRY_JAVA_HOME`` (if set, only that), ``$JAVA_HOME``, the ``java`` on PATH
    and every JDK in /usr/lib/jvm.
    """
    env = dict(os.environ) if env is None else env
    if env.get(JAVA_HOME_VARIABLE):
        home = Path(env[JAVA_HOME_VARIABLE])
        version = java_version(home)
        if version is None or version < minimum or not (home / "bin" / "java").exists():
            raise ApicurioError(
                f"{JAVA_HOME_VARIABLE}={home} is not a JDK of version {minimum} or newer "
                f"(found version {version}): Apicurio Registry needs one"
            )
        return home / "bin" / "java"
    homes: list[Path] = []
    if env.get("JAVA_HOME"):
        homes.append(Path(env["JAVA_HOME"]))
    on_path = shutil.which("java")
    if on_path:
        homes.append(Path(on_path).resolve().parent.parent)
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        homes.extend(sorted(p for p in jvm.iterdir() if p.is_dir() and not p.is_symlink()))
    found: dict[Path, int] = {}
    for home in homes:
        version = java_version(home)
        if version is not None and (home / "bin" / "java").exists():
            found.setdefault(home.resolve(), version)
    usable = [(version, home) for home, version in found.items() if version >= minimum]
    if not usable:
        seen = ", ".join(f"{v} ({h})" for h, v in found.items()) or "none"
        raise ApicurioError(
            f"Apicurio Registry needs Java {minimum} or newer; the JDKs found are: {seen}. Install one (Debian 12 "
            f"has no such package: Eclipse Temurin 25 into /usr/lib/jvm/temurin-25-jdk-amd64, as machines of "
            f"this kind carry it) or point {JAVA_HOME_VARIABLE} at one"
        )
    return max(usable)[1] / "bin" / "java"


@dataclass(frozen=True)
class ApicurioNode:
    directory: Path  # $STACK_DIR/registry: application.properties (0600: it holds the password), tmp/
    host: str
    port: int  # the REST APIs; Confluent's at CCOMPAT_PATH
    management_port: int  # /health/ready, /health/live, /metrics
    jdbc_url: str  # jdbc:postgresql://host:port/database
    user: str
    password: str
    version: str = APICURIO_VERSION

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{CCOMPAT_PATH}"

    @property
    def ready_url(self) -> str:
        return f"http://{self.host}:{self.management_port}/health/ready"

    @property
    def properties_path(self) -> Path:
        return self.directory / "application.properties"

    def properties(self) -> dict[str, str]:
        work = str((self.directory / "tmp").resolve())
        return {
            "quarkus.http.host": self.host,
            "quarkus.http.port": str(self.port),
            "quarkus.management.host": self.host,
            "quarkus.management.port": str(self.management_port),
            "quarkus.http.access-log.enabled": "false",  # a log line per request: gigabytes under load
            "apicurio.storage.kind": "sql",
            "apicurio.storage.sql.kind": "postgresql",
            "apicurio.datasource.url": self.jdbc_url,
            "apicurio.datasource.username": self.user,
            "apicurio.datasource.password": self.password,
            # its default pool keeps 20 connections open; the stack's registry serves a few clients
            "apicurio.datasource.jdbc.initial-size": "2",
            "apicurio.datasource.jdbc.min-size": "2",
            "apicurio.datasource.jdbc.max-size": "20",
            # as Confluent's registry: BACKWARD unless configured otherwise, subjects can be deleted
            "apicurio.rules.global.compatibility": "BACKWARD",
            "apicurio.rest.deletion.artifact.enabled": "true",
            "apicurio.rest.deletion.artifact-version.enabled": "true",
            "apicurio.ccompat.max-subjects": "100000",  # the tests make many subjects in one registry
            "apicurio.storage.snapshot.location": work,
            "apicurio.import.work-dir": work,
        }

    def prepare(self, out: Callable[[str], None] = print) -> list[str]:
        """Fetch the distribution when needed, write the configuration; the command line that starts it."""
        java = find_java()
        app = ensure_distribution(self.version, out)
        (self.directory / "tmp").mkdir(parents=True, exist_ok=True)
        self.properties_path.touch(mode=0o600)
        self.properties_path.chmod(0o600)
        self.properties_path.write_text("".join(f"{k}={_escape(v)}\n" for k, v in self.properties().items()))
        return [
            str(java),
            "-Xms64m",
            "-Xmx512m",
            "-XX:+ExitOnOutOfMemoryError",
            # a registry for development, off the handler's hot path: the quick compiler only takes its start
            # from about 10 to about 6 CPU seconds (and some memory), which counts on a 2-core machine
            "-XX:TieredStopAtLevel=1",
            f"-Djava.io.tmpdir={(self.directory / 'tmp').resolve()}",
            f"-Dquarkus.config.locations={self.properties_path.resolve()}",
            "-jar",
            str(app / "quarkus-run.jar"),
        ]

    @property
    def marker(self) -> str:
        """A string of the registry's command line that names this very registry."""
        return f"-Dquarkus.config.locations={self.properties_path.resolve()}"


def _escape(value: str) -> str:
    """A value for a Java properties file (backslashes, and a leading blank)."""
    return value.replace("\\", "\\\\")
