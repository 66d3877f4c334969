"""The GraphQL endpoint and the bank's page as a service of the local stack (``STACK_ENDPOINT_PORT``, 8888 by
default; 0 leaves it out). ``stack up`` creates its database (``transactiondb``, role ``clojure_ge``) and
starts it; it migrates its database itself, and waits for the topics and subjects that the handler's
``sync`` (or ``run --sync``) creates, reporting not-ready meanwhile on ``/health/ready``."""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from command_handler.adapters.database import drop_database, ensure_role_and_database
from command_handler.config import DatabaseSettings
from open_bank_devtools.stack.variables import HOST

if TYPE_CHECKING:
    from open_bank_devtools.stack.local_stack import LocalStack, Service

DEFAULT_PORT = 8888
DB_NAME = "transactiondb"
DB_USER = "clojure_ge"


def port_from_env(env: Mapping[str, str], errors: list[str]) -> int | None:
    raw = env.get("STACK_ENDPOINT_PORT", str(DEFAULT_PORT))
    if not raw.isdigit() or not 0 <= int(raw) < 65536:
        errors.append(f"STACK_ENDPOINT_PORT={raw!r} must be a port number, or 0 for no endpoint")
        return None
    return int(raw) or None


def database(stack: LocalStack) -> DatabaseSettings:
    return replace(stack.database, name=DB_NAME, user=DB_USER)


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


def service(stack: LocalStack) -> Service | None:
    from open_bank_devtools.stack.local_stack import Service

    port = stack.config.endpoint_port
    if port is None:
        return None
    args = ["-m", "open_bank_endpoint", "run", "--port", str(port)]
    # the stack's services and database for the endpoint, whatever the environment of `stack up` says
    env = {**os.environ, **stack.environment(), "ENDPOINT_HOST": HOST, "ENDPOINT_PORT": str(port)}
    return Service("endpoint", "graphql-endpoint", (port,), lambda: [sys.executable, *args], " ".join(args), env)


def stoppable(stack: LocalStack) -> Service:
    """The endpoint as ``down`` looks for it: also when this configuration has none (port 0), so that one
    started by an earlier ``up`` with a port is stopped rather than left reading the next stack's topics."""
    from open_bank_devtools.stack.local_stack import Service

    found = service(stack)
    if found is not None:
        return found
    marker = "-m open_bank_endpoint run"
    return Service("endpoint", "graphql-endpoint", (), lambda: [], marker)


def environment(stack: LocalStack) -> dict[str, str]:
    port = stack.config.endpoint_port
    return {} if port is None else {"ENDPOINT_URL": url(port)}


def up(stack: LocalStack, start: Callable[[Service], object], timeout_s: float, fresh: bool = False) -> None:
    """Create the endpoint's database, start it and wait until it answers (not until it is ready: it waits
    for the topics and subjects of the handler's sync)."""
    found = service(stack)
    if found is None:
        return
    db = database(stack)
    if fresh:
        drop_database(db.admin_url, db.name)
    for item in ensure_role_and_database(db.admin_url, db.user, db.password, db.name):
        stack.out(f"postgres: created {item}")
    start(found)
    port = found.ports[0]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=1):
                break
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.1)
    stack.out(f"endpoint: the bank's page at {url(port)} (GraphQL: /graphql, /graphql-ws)")


def status(stack: LocalStack) -> str:
    port = stack.config.endpoint_port
    if port is None:
        return "endpoint: off (STACK_ENDPOINT_PORT=0)"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1):
            return f"endpoint: ready, answering at {url(port)}"
    except urllib.error.HTTPError as err:
        return f"endpoint: answering at {url(port)}, not ready: {err.read().decode(errors='replace')[:200]}"
    except OSError:
        return f"endpoint: not answering on port {port}"
