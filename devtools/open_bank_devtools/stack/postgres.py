"""A PostgreSQL cluster of the local stack's own, in the stack's directory.

``initdb`` with the machine's PostgreSQL binaries (Debian's ``postgresql``
package) into ``$STACK_DIR/postgres``, listening on loopback only at its own
port, with password (SCRAM) logins over TCP and no Unix socket. The superuser
``postgres`` has a random password kept in the cluster's folder; the stack's
env file exports it in ``DB_ADMIN_URL``. Started and stopped with ``pg_ctl``,
so tests can also stop it (``immediate`` for a crash) and start it again.

PostgreSQL refuses to run as root: as root, the cluster runs as the ``postgres``
system user that Debian's package creates, and that user is given the right to
traverse (only that, not to list) the folders above the stack's directory.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from command_handler.errors import OperatorError

HOST = "127.0.0.1"
SUPERUSER = "postgres"
SERVER_USER = "postgres"  # the Unix user the server runs as when we are root


class PostgresError(OperatorError):
    """The stack's PostgreSQL cluster could not be created, started or stopped; the message says why."""


def binaries() -> Path:
    """The folder of the newest installed PostgreSQL server binaries (initdb, pg_ctl, postgres)."""
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin") if (p / "initdb").exists()), key=lambda p: int(p.parent.name))
    if versions:
        return versions[-1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) are missing: scripts/setup.sh installs Debian's postgresql package"
    )


@dataclass(frozen=True)
class Cluster:
    directory: Path  # $STACK_DIR/postgres: data/, admin-password, log
    port: int
    out: Callable[[str], None] = print

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def _password_file(self) -> Path:
        return self.directory / "admin-password"

    def admin_url(self) -> str:
        password = quote(self._password_file.read_text().strip(), safe="")
        return f"postgresql://{SUPERUSER}:{password}@{HOST}:{self.port}/postgres"

    # -- running as the right user ----------------------------------------------

    def _server_user(self) -> pwd.struct_passwd | None:
        """The account to run the server as: None for ourselves, the postgres user when we are root."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVER_USER)
        except KeyError as exc:
            raise PostgresError(
                f"running as root, the stack's PostgreSQL needs the '{SERVER_USER}' user "
                "(Debian's postgresql package creates it): scripts/setup.sh installs it"
            ) from exc

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = self._server_user()
        result = subprocess.run(
            [str(binaries() / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd=self.directory,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
        )
        if check and result.returncode != 0:
            raise PostgresError(f"{args[0]} {args[1] if len(args) > 1 else ''} failed: {result.stderr.strip()}")
        return result

    def _make_reachable(self, user: pwd.struct_passwd) -> None:
        """Let ``user`` traverse every folder above the cluster's (search permission only)."""
        for folder in reversed(self.directory.resolve().parents):
            info = folder.stat()
            if info.st_mode & stat.S_IXOTH or (info.st_uid == user.pw_uid and info.st_mode & stat.S_IXUSR):
                continue
            if shutil.which("setfacl"):
                subprocess.run(["setfacl", "-m", f"u:{user.pw_name}:x", str(folder)], check=True)
                self.out(f"postgres: let user {user.pw_name} traverse {folder} (ACL u:{user.pw_name}:x)")
            else:
                folder.chmod(info.st_mode | stat.S_IXOTH)
                self.out(f"postgres: let others traverse {folder} (chmod o+x; install 'acl' for a narrower grant)")

    # -- life cycle -----------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> bool:
        """Create the cluster unless it exists. True when this call created it."""
        if self.initialized:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        user = self._server_user()
        self._password_file.write_text(secrets.token_urlsafe(18) + "\n")
        self._password_file.chmod(0o600)
        if user is not None:
            self._make_reachable(user)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            os.chown(self._password_file, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            "--pwfile",
            str(self._password_file),
            "--auth-host=scram-sha-256",
            "--auth-local=peer",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-instructions",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# the open-bank local stack: port and addresses are in stack.conf, rewritten at each start\n")
            conf.write("include_if_exists = 'stack.conf'\n")
        self.out(f"postgres: created a cluster in {self.data}")
        return True

    def pid(self) -> int | None:
        """PID of the running postmaster of this cluster, else None."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"postgres" in cmdline and str(self.data.resolve()).encode() in cmdline else None

    def start(self, timeout_s: float = 60) -> bool:
        """Start the cluster unless it runs. True when this call started it."""
        self.init()
        if self.pid() is not None:
            return False
        user = self._server_user()
        conf = self.data / "stack.conf"
        conf.write_text(
            f"port = {self.port}\n"
            f"listen_addresses = '{HOST}'\n"
            "unix_socket_directories = ''\n"
            "max_connections = 200\n"
            "logging_collector = off\n"
        )
        if user is not None:
            os.chown(conf, user.pw_uid, user.pw_gid)
        result = self._run(
            "pg_ctl",
            "start",
            "--pgdata",
            str(self.data.resolve()),
            "--log",
            str(self.log_path.resolve()),
            "--wait",
            "--timeout",
            str(int(timeout_s)),
            check=False,
        )
        if result.returncode != 0:
            tail = self.log_path.read_text(errors="replace")[-1500:] if self.log_path.exists() else ""
            raise PostgresError(f"postgres did not start on port {self.port}: {result.stderr.strip()}\n{tail}")
        return True

    def stop(self, mode: str = "fast", timeout_s: float = 60) -> bool:
        """Stop the cluster if it runs (``mode``: smart, fast, or immediate for a crash). True if it was running."""
        if self.pid() is None:
            return False
        self._run("pg_ctl", "stop", "--pgdata", str(self.data.resolve()), "--mode", mode, "--wait",
                  "--timeout", str(int(timeout_s)))  # fmt: skip
        return True
