"""A tiny HTTP endpoint for container platforms: /health/live, /health/ready and the Prometheus /metrics."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from command_handler.adapters.metrics import CONTENT_TYPE, Metrics


class Health:
    """State the consumer loop updates and the endpoint reports."""

    def __init__(self, stall_after_s: float = 60.0) -> None:
        self.stall_after_s = stall_after_s
        self.ready = False
        self.reason = "starting"
        self._beat = time.monotonic()

    def beat(self) -> None:
        self._beat = time.monotonic()

    def live(self) -> bool:
        return time.monotonic() - self._beat < self.stall_after_s

    def report(self) -> dict[str, Any]:
        return {"live": self.live(), "ready": self.ready and self.live(), "state": self.reason}


def serve_health(
    health: Health, port: int, host: str = "0.0.0.0", metrics: Metrics | None = None
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics" and metrics is not None:
                exposition = metrics.exposition()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(exposition)))
                self.end_headers()
                self.wfile.write(exposition)
                return
            report = health.report()
            ok = {"/health/live": report["live"], "/health/ready": report["ready"]}.get(self.path)
            status = 404 if ok is None else (200 if ok else 503)
            body = json.dumps(report).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
