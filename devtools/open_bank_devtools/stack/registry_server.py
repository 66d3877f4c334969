"""A small Confluent-compatible Schema Registry for the local stack and tests.

It speaks the subset of the REST API that ``confluent_kafka``'s
``SchemaRegistryClient`` and Avro serializers use. Production points
``SCHEMA_REGISTRY_URL`` at a real registry instead. Run it with
``python -m open_bank_devtools.stack.registry_server --port 8081 --database-url ...``
(``command-handler stack up`` does that).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import create_engine

from open_bank_devtools.stack.registry_store import GLOBAL, RegistryError, RegistryStore

log = logging.getLogger("schema-registry")

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_BODY = 4 * 1024 * 1024

Handler = Callable[..., Any]


class Api:
    """Routes: (method, regex) -> function(store, match groups..., query, body)."""

    def __init__(self, store: RegistryStore) -> None:
        self.store = store
        s = store
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"/"), lambda q, b: {}),
            ("GET", re.compile(r"/schemas/types"), lambda q, b: ["AVRO"]),
            ("GET", re.compile(r"/schemas/ids/([^/]+)"), self.get_schema),
            ("GET", re.compile(r"/subjects"), lambda q, b: s.subjects(_flag(q, "deleted"))),
            ("POST", re.compile(r"/subjects/([^/]+)/versions"), self.register),
            ("POST", re.compile(r"/subjects/([^/]+)"), self.lookup),
            (
                "GET",
                re.compile(r"/subjects/([^/]+)/versions"),
                lambda subj, q, b: s.versions(subj, _flag(q, "deleted")),
            ),
            (
                "GET",
                re.compile(r"/subjects/([^/]+)/versions/([^/]+)"),
                lambda subj, v, q, b: s.version(subj, v, _flag(q, "deleted")).to_json(),
            ),
            (
                "GET",
                re.compile(r"/subjects/([^/]+)/versions/([^/]+)/schema"),
                lambda subj, v, q, b: json.loads(s.version(subj, v).schema),
            ),
            (
                "DELETE",
                re.compile(r"/subjects/([^/]+)"),
                lambda subj, q, b: s.delete_subject(subj, _flag(q, "permanent")),
            ),
            ("GET", re.compile(r"/config"), lambda q, b: {"compatibilityLevel": s.compatibility()}),
            (
                "PUT",
                re.compile(r"/config"),
                lambda q, b: {"compatibility": s.set_compatibility(GLOBAL, _level(b))},
            ),
            (
                "GET",
                re.compile(r"/config/([^/]+)"),
                lambda subj, q, b: {"compatibilityLevel": s.compatibility(subj, _flag(q, "defaultToGlobal"))},
            ),
            (
                "PUT",
                re.compile(r"/config/([^/]+)"),
                lambda subj, q, b: {"compatibility": s.set_compatibility(subj, _level(b))},
            ),
            (
                "DELETE",
                re.compile(r"/config/([^/]+)"),
                lambda subj, q, b: {"compatibilityLevel": s.delete_compatibility(subj)},
            ),
            (
                "POST",
                re.compile(r"/compatibility/subjects/([^/]+)/versions/([^/]+)"),
                self.test_compatibility,
            ),
        ]

    def get_schema(self, schema_id: str, query: dict[str, list[str]], body: Any) -> dict[str, Any]:
        try:
            number = int(schema_id)
        except ValueError:
            raise RegistryError(404, 40403, f"Schema {schema_id} not found") from None
        schema, schema_type = self.store.schema_by_id(number)
        result: dict[str, Any] = {"schema": schema}
        if schema_type != "AVRO":
            result["schemaType"] = schema_type
        return result

    def register(self, subject: str, query: dict[str, list[str]], body: Any) -> dict[str, Any]:
        body = _schema_body(body)
        schema_type = body.get("schemaType", "AVRO")
        return {"id": self.store.register(subject, body.get("schema"), schema_type, _flag(query, "normalize"))}

    def lookup(self, subject: str, query: dict[str, list[str]], body: Any) -> dict[str, Any]:
        body = _schema_body(body)
        found = self.store.lookup(subject, body.get("schema"), _flag(query, "deleted"), _flag(query, "normalize"))
        return found.to_json()

    def test_compatibility(self, subject: str, version: str, query: dict[str, list[str]], body: Any) -> Any:
        body = _schema_body(body)
        problems = self.store.test_compatibility(subject, version, body.get("schema"))
        result: dict[str, Any] = {"is_compatible": not problems}
        if _flag(query, "verbose"):
            result["messages"] = problems
        return result

    def dispatch(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        path = path.rstrip("/") or "/"
        allowed = False
        for route_method, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method != method:
                allowed = True
                continue
            return handler(*(unquote(g) for g in match.groups()), query, body)
        if allowed:
            raise RegistryError(405, 405, f"HTTP {method} is not supported on {path}")
        raise RegistryError(404, 404, f"No such resource: {path}")


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() == "true"


def _schema_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RegistryError(422, 42201, "Invalid schema: the request body must be a JSON object with 'schema'")
    if body.get("references"):
        raise RegistryError(422, 42201, "Invalid schema: schema references are not supported by this registry")
    return body


def _level(body: Any) -> Any:
    if not isinstance(body, dict):
        raise RegistryError(422, 42203, 'Invalid compatibility level: the body must be {"compatibility": ...}')
    return body.get("compatibility")


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: without this, 40 ms per answer
    timeout = 10  # seconds to wait on a slow or short request body
    api: Api

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0 or length > MAX_BODY:
                raise RegistryError(413, 413, f"request body must be between 0 and {MAX_BODY} bytes")
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError as exc:
                raise RegistryError(400, 400, f"Unparseable JSON body: {exc}") from exc
            result = self.api.dispatch(method, url.path, parse_qs(url.query), body)
            self._send(200, result)
        except RegistryError as err:
            self._send(err.status, {"error_code": err.code, "message": err.message})
        except ValueError as exc:  # e.g. a bad Content-Length
            self._send(400, {"error_code": 400, "message": str(exc)})
        except Exception as exc:
            log.exception("internal error on %s %s", method, self.path)
            self._send(500, {"error_code": 50001, "message": f"Error in the backend data store: {exc}"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def make_server(host: str, port: int, database_url: str) -> ThreadingHTTPServer:
    store = RegistryStore(create_engine(database_url, pool_size=4, max_overflow=4, pool_pre_ping=True))
    store.create_tables()
    handler = type("BoundRequestHandler", (RequestHandler,), {"api": Api(store)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local Confluent-compatible Schema Registry (Avro only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--database-url", required=True, help="SQLAlchemy URL of the registry's Postgres database")
    parser.add_argument("--tls-cert", help="PEM certificate (chain): serve https instead of http")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server = make_server(args.host, args.port, args.database_url)
    scheme = "http"
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("schema registry listening on %s://%s:%d", scheme, args.host, args.port)
    server.serve_forever()
    server.server_close()
    log.info("schema registry stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
