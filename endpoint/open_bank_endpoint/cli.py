"""``open-bank-endpoint run|migrate``: the GraphQL endpoint until SIGTERM/SIGINT, or its database migration."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import uvicorn

from command_handler.adapters.database import ensure_role_and_database
from command_handler.config import ConfigError
from open_bank_endpoint.config import describe, load_endpoint_settings
from open_bank_endpoint.errors import EndpointConfigError
from open_bank_endpoint.store import upgrade


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="open-bank-endpoint",
        description="The open-bank GraphQL endpoint (drop-in for the reference's) and the bank's page.",
        epilog="environment:\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve until SIGTERM/SIGINT (migrates its database first)")
    run.add_argument("--no-migrate", action="store_true", help="do not upgrade the database at start")
    run.add_argument("--port", type=int, help="the port to listen on (instead of ENDPOINT_PORT)")
    migrate = commands.add_parser("migrate", help="upgrade the endpoint's database to the latest revision")
    migrate.add_argument("--create-db", action="store_true", help="create the role and database first (DB_ADMIN_URL)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stdout)
    for noisy in ("httpx", "httpx2", "httpcore", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    env = dict(os.environ)
    if args.command == "run" and args.port:
        env["ENDPOINT_PORT"] = str(args.port)
    try:
        settings = load_endpoint_settings(env)
    except (ConfigError, EndpointConfigError) as err:
        print(f"open-bank-endpoint: {err}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        db = settings.database
        if args.create_db:
            for item in ensure_role_and_database(db.admin_url, db.user, db.password, db.name):
                print(f"created {item}")
        upgrade(db)
        print(f"{db.display()} at head")
        return 0
    from open_bank_endpoint.app import create_app
    from open_bank_endpoint.bank import Bank

    app = create_app(settings, Bank(settings, migrate=not args.no_migrate))
    logging.getLogger(__name__).info(
        "serving the bank at http://%s:%d/ (GraphQL: /graphql, /graphql-ws)", settings.host, settings.port
    )
    # uvicorn stops on SIGTERM and SIGINT: open WebSockets are closed, then the lifespan stops the bank. It then
    # raises the signal again for the handler it found: a no-op one, so that a clean stop exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        loop="auto",  # uvloop, where it is installed (a dependency but on Windows)
        ws="websockets-sansio",
        # the frames are small JSON documents: compressing them costs CPU on both ends and saves nothing
        ws_per_message_deflate=False,
        lifespan="on",
    )
    return 0
