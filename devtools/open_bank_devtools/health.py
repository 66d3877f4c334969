"""Waiting for a handler to be ready, the way a platform does: through its ``/health/ready`` endpoint."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable


def is_ready(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):  # 503 (not ready yet) is an HTTPError, a URLError
        return False


def wait_ready(port: int, timeout_s: float, running: Callable[[], bool] = lambda: True) -> None:
    """Return once ``/health/ready`` answers 200; RuntimeError if ``running`` turns false or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_ready(port):
            return
        if not running():
            raise RuntimeError("the handler exited before it was ready")
        time.sleep(0.05)
    raise TimeoutError(f"the handler on health port {port} was not ready within {timeout_s:.0f}s")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
