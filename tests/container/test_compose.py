"""docker/compose.local.yaml, the compose variant that runs here: the image migrates its database,
then runs beside the local stack, becomes ready and answers; `down` stops it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from open_bank_devtools.health import free_port, wait_ready
from open_bank_devtools.loadtest.bank_client import BankClient

from ..integration.handler_process import World
from .conftest import IMAGE, docker_client

pytestmark = pytest.mark.integration
COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker" / "compose.local.yaml"


def test_the_local_compose_variant_migrates_runs_and_answers(world: World) -> None:
    docker_client()
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is missing: scripts/docker-test.sh installs Debian's docker-compose")
    port = free_port()
    project = f"openbank{os.getpid()}"
    env = {**os.environ, **world.env, "HEALTH_PORT": str(port), "HANDLER_IMAGE": IMAGE}
    env.pop("DB_ADMIN_URL", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [compose, "-p", project, "-f", str(COMPOSE_FILE), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    up = run("up", "-d")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        wait_ready(port, 120)
        client = BankClient(world.settings)
        try:
            assert client.wait_for(client.open_account("compose-user")).record == "AccountCreationConfirmed"
        finally:
            client.close()
        logs = run("logs", "migrate").stdout
        assert "migrated from None to" in logs or "nothing to do" in logs
    finally:
        down = run("down", "--timeout", "20")
    assert down.returncode == 0, down.stdout + down.stderr
