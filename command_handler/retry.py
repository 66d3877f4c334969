"""The one backoff of the project, and retry with it for a bounded time (waiting for a service at start).

A signal that must end the wait (SIGTERM during start-up) is raised as a ``BaseException``, which
``retry`` never catches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from command_handler.errors import NotReady

T = TypeVar("T")

log = logging.getLogger(__name__)

__all__ = ["Backoff", "NotReady", "retry"]


class Backoff:
    """Delays that double from ``first_s`` up to ``max_s``."""

    def __init__(self, first_s: float = 0.1, max_s: float = 5.0) -> None:
        self._next = first_s
        self._max = max_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._max)
        return delay


def retry(
    attempt: Callable[[], T],
    what: str,
    timeout_s: float,
    retry_on: tuple[type[Exception], ...] = (Exception,),
    first_delay_s: float = 0.2,
    max_delay_s: float = 5.0,
) -> T:
    """Call ``attempt`` until it returns; on ``retry_on`` errors wait and try again, up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    backoff = Backoff(first_delay_s, max_delay_s)
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except retry_on as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            delay = backoff.next()
            if time.monotonic() + delay > deadline:
                raise NotReady(f"{what}: no success within {timeout_s:.0f}s ({tries} tries): {reason}") from exc
            log.warning("waiting for %s (try %d): %s", what, tries, reason)
            time.sleep(delay)
