"""Fixtures of the container tests: a Docker engine and the image, or a skip that says why."""

from __future__ import annotations

import os
from collections.abc import Iterator
from uuid import uuid4

import pytest

from ..conftest import Services
from ..integration.handler_process import World, isolated_world

IMAGE = os.environ.get("HANDLER_IMAGE", "open-bank/command-handler:test")
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # the reaper's image cannot be pulled here


def docker_client():  # type: ignore[no-untyped-def]
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as err:
        pytest.skip(f"no Docker engine reachable ({type(err).__name__}): scripts/docker-test.sh starts one")
    try:
        client.images.get(IMAGE)
    except Exception:
        pytest.skip(f"image {IMAGE} not built: scripts/docker-test.sh builds it")
    return client


@pytest.fixture
def world(services: Services) -> Iterator[World]:
    docker_client()
    with isolated_world(services.env, "container" + uuid4().hex[:8]) as w:
        yield w
