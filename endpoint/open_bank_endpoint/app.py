"""The ASGI application: GraphQL over HTTP at /graphql and over WebSocket at /graphql-ws
(subscriptions-transport-ws, subprotocol ``graphql-ws``), the bank's page at /, and /health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ariadne.asgi import GraphQL
from ariadne.asgi.handlers import GraphQLHTTPHandler, GraphQLWSHandler
from ariadne.types import Operation
from graphql import DocumentNode, GraphQLError, GraphQLSchema, parse, validate
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from open_bank_endpoint.bank import Bank
from open_bank_endpoint.config import EndpointSettings
from open_bank_endpoint.schema import build_schema

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
SUBPROTOCOL = "graphql-ws"


@lru_cache(maxsize=1024)
def _parse(query: str) -> DocumentNode:
    return parse(query)


def cached_parser(_context: Any, data: dict[str, Any]) -> DocumentNode:
    """Parse a query once: clients send the same few documents over and over (a document that does not parse
    is not cached, and raises as before)."""
    return _parse(data["query"])


_validated: dict[tuple[int, Any], tuple[DocumentNode, list[GraphQLError]]] = {}


def cached_validator(
    schema: GraphQLSchema, document_ast: DocumentNode, rules: Any = None, max_errors: int | None = None, **kw: Any
) -> list[GraphQLError]:
    """Validate a parsed document once (the cached parser gives the same document for the same text)."""
    key = (id(document_ast), rules if rules is None or isinstance(rules, tuple) else id(rules))
    found = _validated.get(key)
    if found is not None and found[0] is document_ast:
        return found[1]
    errors = validate(schema, document_ast, rules, max_errors, **kw)
    if len(_validated) > 2048:
        _validated.clear()
    _validated[key] = (document_ast, errors)
    return errors


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """A browser's Origin is the endpoint's own (served this page) or one allowed; clients without one pass."""
    if not origin:
        return True
    return urlsplit(origin).netloc == host or origin.rstrip("/") in allowed


class _ClosedSocket(logging.Filter):
    """Ariadne logs an answer it could not send to a client that went away; that is no error of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "after sending 'websocket.close'" not in record.getMessage()


logging.getLogger("ariadne").addFilter(_ClosedSocket())


class LegacyWSHandler(GraphQLWSHandler):
    """Ariadne's subscriptions-transport-ws handler, as lenient as the reference's endpoint: an operation may
    start before ``connection_init`` (the reference's load generators never send one), and a browser from an
    origin not allowed is refused."""

    def __init__(self, allowed_origins: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allowed_origins = allowed_origins
        self._observers: dict[int, asyncio.Task[Any]] = {}  # id of an operation's results -> the task sending them

    async def handle_websocket(self, websocket: WebSocket) -> None:
        if not origin_allowed(websocket.headers.get("origin"), websocket.headers.get("host"), self.allowed_origins):
            await websocket.close(code=4403)
            return
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(SUBPROTOCOL if SUBPROTOCOL in offered else None)
        operations: dict[str, Operation] = {}
        try:
            while WebSocketState.DISCONNECTED not in (websocket.client_state, websocket.application_state):
                message = await websocket.receive_json()
                if isinstance(message, dict):
                    await self.handle_websocket_message(websocket, message, operations)
        except (WebSocketDisconnect, RuntimeError):
            pass
        except Exception as error:  # a frame that is not JSON: the socket is closed, as the reference does
            log.info("closing a WebSocket: %s", error)
            if websocket.application_state != WebSocketState.DISCONNECTED:
                await websocket.close(code=1003)
        finally:
            for operation in list(operations.values()):
                try:
                    await self.stop_websocket_operation(websocket, operation)
                except Exception as error:
                    log.debug("stopping an operation: %s", error)
            operations.clear()

    async def observe_async_results(self, websocket: WebSocket, results: Any, operation_id: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._observers[id(results)] = task
        try:
            await super().observe_async_results(websocket, results, operation_id)
        except (RuntimeError, WebSocketDisconnect, OSError):
            await results.aclose()  # the client went away while an answer was on its way: nothing to tell it
        finally:
            self._observers.pop(id(results), None)

    async def stop_websocket_operation(self, websocket: WebSocket, operation: Operation) -> None:
        # Ariadne closes the operation's generator, which fails while the generator waits for its next item (a
        # stream between two transactions): the task that sends its results is cancelled instead
        task = self._observers.pop(id(operation.generator), None)
        if task is None or task.done():
            await super().stop_websocket_operation(websocket, operation)
            return
        task.cancel()
        with contextlib.suppress(BaseException):
            await task

    async def handle_websocket_message(
        self, websocket: WebSocket, message: dict[Any, Any], operations: dict[str, Operation]
    ) -> None:
        try:
            await super().handle_websocket_message(websocket, message, operations)
        except GraphQLError as error:  # a start without a query, variables not an object...
            await websocket.send_json({"type": "error", "id": message.get("id"), "payload": {"message": str(error)}})


def create_app(settings: EndpointSettings, bank: Bank | None = None) -> Starlette:
    bank = bank or Bank(settings)
    schema = build_schema()

    def context(request: Any, _data: Any = None) -> dict[str, Any]:
        return {"bank": bank, "request": request}

    graphql = GraphQL(
        schema,
        context_value=context,
        query_parser=cached_parser,
        query_validator=cached_validator,  # type: ignore[arg-type]  # the same call, a narrower declared signature
        http_handler=GraphQLHTTPHandler(),
        websocket_handler=LegacyWSHandler(settings.allowed_origins, keepalive=settings.keepalive_s or None),
    )

    async def health_live(_: Request) -> Response:
        report = bank.health()
        return JSONResponse(report, status_code=200 if report["live"] else 503)

    async def health_ready(_: Request) -> Response:
        report = bank.health()
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        bank.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            await asyncio.to_thread(bank.stop)
            log.info("stopped")

    own = tuple(f"http://{h}:{settings.port}" for h in ("localhost", "127.0.0.1", settings.host))
    return Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql-ws", graphql),
            WebSocketRoute("/graphql", graphql),
            Route("/health/live", health_live),
            Route("/health/ready", health_ready),
            Route("/", page),
            Route("/client", page),
            Route("/employee", page),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.allowed_origins + own),
                allow_methods=["GET", "POST"],
                allow_headers=["content-type"],
            )
        ],
        lifespan=lifespan,
    )
