"""SIGTERM ends the handler, exit 0, within 10 s: here during the start-up wait for a broker that is not
there (the rest of the states are the loop's unit tests, tests/unit/test_loop.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from open_bank_devtools.health import free_port

from ..conftest import Services
from .handler_process import HandlerProcess, World, isolated_world

pytestmark = pytest.mark.integration


@pytest.fixture
def world(services: Services) -> Iterator[World]:
    with isolated_world(services.env, "stop" + uuid4().hex[:8]) as w:
        yield w


@pytest.mark.parametrize("tries_before", [1, 3])
def test_sigterm_during_the_start_up_wait_ends_the_process(world: World, tmp_path: Path, tries_before: int) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    handler = HandlerProcess(world, tmp_path, KAFKA_BROKERS=nobody, STARTUP_TIMEOUT_S="600")
    handler.wait_until(f"waiting for Kafka at {nobody} (try {tries_before})")
    assert handler.terminate(timeout_s=10) == 0
    assert "stopped during start-up (SIGTERM)" in handler.output()
