"""Run ``open-bank-endpoint run`` as a real process beside a handler, for the endpoint's and the page's tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from command_handler.adapters.database import drop_database, ensure_role_and_database
from open_bank_devtools.health import free_port

from .handler_process import World


class EndpointProcess:
    def __init__(self, world: World, log_dir: Path, name: str, **extra_env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.ws_url = f"ws://127.0.0.1:{self.port}/graphql-ws"
        self.db_name = f"endpoint_{name}"
        self.env = {
            **world.env,
            "ENDPOINT_PORT": str(self.port),
            "ENDPOINT_DB_NAME": self.db_name,
            "ENDPOINT_GROUP_ID": f"graphql-endpoint-{name}",
            "ENDPOINT_PBKDF2_ITERATIONS": "1000",  # fast logins for the tests; the default is 600,000
            **extra_env,
            "PATH": os.environ["PATH"],
        }
        db = world.settings.database
        ensure_role_and_database(db.admin_url, "clojure_ge", db.password, self.db_name)
        self.admin_url = db.admin_url
        self.log_path = log_dir / f"endpoint-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in terminate()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "open_bank_endpoint", "run"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text()

    def health(self, which: str = "ready") -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"{self.url}health/{which}", timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def wait_ready(self, timeout_s: float = 60) -> EndpointProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the endpoint exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.health()[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the endpoint was not ready within {timeout_s}s:\n{self.output()[-4000:]}")

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """A query over HTTP POST /graphql: the whole answer (data, errors)."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}graphql", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as err:
            return dict(json.loads(err.read()))

    def terminate(self, timeout_s: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        finally:
            self._log.close()
            drop_database(self.admin_url, self.db_name)


@contextmanager
def running_endpoint(world: World, log_dir: Path, name: str, **extra_env: str) -> Iterator[EndpointProcess]:
    endpoint = EndpointProcess(world, log_dir, name, **extra_env)
    try:
        yield endpoint.wait_ready()
    finally:
        if endpoint.process.poll() is None:
            code = endpoint.terminate()
            assert code == 0, endpoint.output()[-3000:]
