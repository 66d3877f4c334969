"""Run ``command-handler run`` as a real process for end-to-end tests, and an isolated world for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from command_handler.adapters import migrations
from command_handler.adapters.database import drop_database
from command_handler.config import Settings, load_settings
from command_handler.topology import topic_specs
from open_bank_devtools.health import free_port, wait_ready


@dataclass
class World:
    """Topics, group and database of one test module, so modules never see each other's traffic."""

    env: dict[str, str]

    @property
    def settings(self) -> Settings:
        return load_settings(self.env)


@contextmanager
def isolated_world(base_env: dict[str, str], name: str) -> Iterator[World]:
    env = {
        **base_env,
        "DB_NAME": f"e2e_{name}",
        **{spec.env: f"{spec.name}_{name}" for spec in topic_specs()},
        "KAFKA_GROUP_ID": f"command-handler-{name}",
        "STATS_INTERVAL_S": "5",
    }
    world = World(env)
    db = world.settings.database
    migrations.fresh_database(db)
    try:
        yield world
    finally:
        drop_database(db.admin_url, db.name)


class HandlerProcess:
    """``python -m command_handler run`` with its output in a log file."""

    def __init__(self, world: World, log_dir: Path, name: str = "handler", sync: bool = True, **extra_env: str) -> None:
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self.health_port = int(extra_env.get("HEALTH_PORT") or free_port())
        extra_env = {**extra_env, "HEALTH_PORT": str(self.health_port)}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in wait()
        args = [sys.executable, "-m", "command_handler", "run", *(["--sync"] if sync else [])]
        self.process = subprocess.Popen(
            args,
            env={**world.env, **extra_env, "PATH": os.environ["PATH"]},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_until(self, text: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"handler exited with {self.process.returncode}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"handler did not log {text!r} within {timeout_s}s:\n{self.output()[-4000:]}")

    def wait_ready(self, timeout_s: float = 60.0) -> HandlerProcess:
        """Until ``/health/ready`` answers 200: the handler consumes its partitions."""
        try:
            wait_ready(self.health_port, timeout_s, running=lambda: self.process.poll() is None)
        except (RuntimeError, TimeoutError) as err:
            raise AssertionError(f"{err}:\n{self.output()[-4000:]}") from err
        return self

    def terminate(self, timeout_s: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        self.process.kill()
        self.wait(10)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout_s)
        finally:
            self._log.close()


def wait_committed(world: World, timeout_s: float = 120) -> None:
    """Until the handler's group committed the end of every command partition: every record was handled
    and its outputs written (with transactions: committed too)."""
    from confluent_kafka import Consumer, TopicPartition

    settings = world.settings
    probe = Consumer({"bootstrap.servers": settings.kafka.brokers, "group.id": settings.kafka.group_id})
    topic = settings.topics.commands
    partitions = [TopicPartition(topic, p) for p in probe.list_topics(topic, timeout=10).topics[topic].partitions]
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]
            committed = [c.offset for c in probe.committed(partitions, timeout=10)]
            if all(c >= e for c, e in zip(committed, ends, strict=True) if e > 0):
                return
            assert time.monotonic() < deadline, f"the handler did not commit the end: {committed} of {ends}"
            time.sleep(0.1)
    finally:
        probe.close()
