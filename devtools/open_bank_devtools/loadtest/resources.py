"""CPU and memory of the handler, the broker and Postgres, sampled with psutil.

CPU is in percent of one core over the time since the previous sample (so a
process using both cores of this machine fully shows 200); memory is resident
set size in MiB, summed over all processes of a component (Postgres has many).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil


def postgres_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("postgres", "postmaster")]


def process_tree(pid: Callable[[], int | None]) -> Callable[[], list[int]]:
    """A process and its children (a PostgreSQL postmaster and its backends), looked up at each sample."""

    def pids() -> list[int]:
        root = pid()
        if root is None:
            return []
        try:
            return [root, *(child.pid for child in psutil.Process(root).children(recursive=True))]
        except psutil.Error:
            return []

    return pids


class ResourceSampler:
    def __init__(self, components: dict[str, Callable[[], list[int]]]) -> None:
        self.components = components
        self._last: dict[int, tuple[float, float]] = {}  # pid -> (cpu seconds, wall time)

    def sample(self) -> dict[str, tuple[float, float]]:
        """component -> (CPU % of one core since the last sample, RSS MiB)."""
        result = {}
        for name, pids in self.components.items():
            cpu = rss = 0.0
            for pid in pids():
                try:
                    process = psutil.Process(pid)
                    with process.oneshot():
                        times = process.cpu_times()
                        used = times.user + times.system
                        rss += process.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                now = time.monotonic()
                before = self._last.get(pid)
                self._last[pid] = (used, now)
                if before is not None and now > before[1]:
                    cpu += 100 * (used - before[0]) / (now - before[1])
            result[name] = (cpu, rss)
        return result


def pids_of(pid: int | None) -> Callable[[], list[int]]:
    return lambda: [pid] if pid else []
