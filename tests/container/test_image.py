"""The production image, started as a container with testcontainers against the local stack.

Needs a Docker engine and the image (``HANDLER_IMAGE``, default open-bank/command-handler:test);
``scripts/docker-test.sh`` provides both. Without them the tests are skipped, saying why. The
container shares the host's network, so it reaches the stack on 127.0.0.1 like any local process.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from open_bank_devtools.health import free_port, wait_ready
from open_bank_devtools.loadtest.bank_client import BankClient

from ..integration.handler_process import World
from .conftest import IMAGE

pytestmark = pytest.mark.integration


@pytest.fixture
def container(world: World) -> Iterator[tuple[object, int]]:
    from testcontainers.core.container import DockerContainer

    port = free_port()
    env = {k: v for k, v in world.env.items() if k.startswith(("KAFKA_", "SCHEMA_REGISTRY_", "DB_", "STATS_", "LOG_"))}
    env.pop("DB_ADMIN_URL", None)  # the handler needs no superuser
    handler = DockerContainer(IMAGE, env={**env, "HEALTH_PORT": str(port)}, network_mode="host")
    handler.start()
    try:
        wait_ready(port, 120, running=lambda: _running(handler))
        yield handler, port
    finally:
        wrapped = handler.get_wrapped_container()
        wrapped.reload()
        if wrapped.status == "running":
            wrapped.kill()
        wrapped.remove(force=True)


def _running(handler) -> bool:  # type: ignore[no-untyped-def]
    wrapped = handler.get_wrapped_container()
    wrapped.reload()  # the status as the engine has it now
    return wrapped.status in ("created", "running")


def test_the_image_answers_the_contract_reports_ready_and_runs_as_non_root(container, world: World) -> None:  # type: ignore[no-untyped-def]
    handler, port = container
    client = BankClient(world.settings)
    try:
        opened = client.wait_for(client.open_account("container-user"))
        assert opened.record == "AccountCreationConfirmed"
        deposit = client.transfer("container-user", "", 2_500, "cash", opened.value["iban"], "in")
        assert client.wait_for(deposit).record == "MoneyTransferConfirmed"
        assert client.wait_events(opened.value["iban"], 1)[0].value["new_balance"] == 2_500
        refused = client.transfer("container-user", "nope", 1, opened.value["iban"], "NL66OPEN0000000000", "x")
        assert client.wait_for(refused).value["reason"] == "invalid token"
    finally:
        client.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert b'open_bank_commands_total{outcome="confirmed",type="ConfirmAccountCreation"}' in response.read()
    wrapped = handler.get_wrapped_container()
    exit_code, output = wrapped.exec_run(["id", "-u"])
    assert exit_code == 0 and output.decode().strip() == "10001"
    assert wrapped.attrs["Config"]["User"] == "10001"
    deadline = time.monotonic() + 60  # the image's HEALTHCHECK probes every 5 s
    while wrapped.attrs["State"].get("Health", {}).get("Status") != "healthy" and time.monotonic() < deadline:
        time.sleep(1)
        wrapped.reload()
    assert wrapped.attrs["State"]["Health"]["Status"] == "healthy"


def test_sigterm_under_load_stops_the_container_with_exit_0_within_10_s(container, world: World) -> None:  # type: ignore[no-untyped-def]
    handler, _ = container
    client = BankClient(world.settings)
    stop = threading.Event()
    sent = []

    def load() -> None:
        while not stop.is_set() and len(sent) < 20_000:
            sent.append(client.transfer("loader", "", 1, "cash", "NL66OPEN0000000000", "load"))
            if len(sent) % 200 == 0:
                client.flush()

    opened = client.wait_for(client.open_account("loader"))
    assert opened.record == "AccountCreationConfirmed"
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        client.wait_for(sent[0] if sent else client.transfer("loader", "", 1, "cash", "NL66OPEN0000000000", "x"))
        wrapped = handler.get_wrapped_container()
        wrapped.kill(signal="SIGTERM")
        result = wrapped.wait(timeout=10)  # the bound the issue sets for a graceful stop
        assert result["StatusCode"] == 0
        logs = wrapped.logs().decode()
        assert "stopping: SIGTERM" in logs and "stopped (" in logs
    finally:
        stop.set()
        thread.join(10)
        client.close()
