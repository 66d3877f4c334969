"""Retry with exponential backoff for a bounded time: used wherever we wait for a service."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from command_handler.errors import OperatorError

T = TypeVar("T")

log = logging.getLogger(__name__)


class NotReady(OperatorError):
    """Raised by ``retry`` when ``what`` did not succeed within the time allowed."""


def retry(
    attempt: Callable[[], T],
    what: str,
    timeout_s: float,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    first_delay_s: float = 0.2,
    max_delay_s: float = 5.0,
) -> T:
    """Call ``attempt`` until it returns; on ``retry_on`` errors wait and try again, up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = first_delay_s
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except retry_on as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if time.monotonic() + delay > deadline:
                raise NotReady(f"{what}: no success within {timeout_s:.0f}s ({tries} tries): {reason}") from exc
            log.warning("waiting for %s (try %d): %s", what, tries, reason)
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)
