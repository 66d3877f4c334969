"""``command-handler``: the one command line of the project. Thin: parse, configure, delegate."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from command_handler import __version__
from command_handler.config import ConfigError, Settings, describe_variables, load_settings
from command_handler.errors import OperatorError

log = logging.getLogger("command_handler")

EXIT_FAILURE = 1
EXIT_CONFIG = 2
# Installed development tools (open-bank-devtools) add their subcommands through entry points of this group:
# each is a callable (subparsers, formatter class) -> None that adds a parser with set_defaults(func=...).
TOOLS_GROUP = "command_handler.subcommands"
# the product's own commands: for these the tools are not loaded (a handler imports nothing it does not use)
PRODUCT_COMMANDS = ("run", "migrate", "sync")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for noisy in ("alembic", "httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(quiet)


def variables_epilog(*groups: str) -> str:
    return "environment variables:\n" + describe_variables(groups or None)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from command_handler.adapters import migrations
    from command_handler.adapters.database import ensure_role_and_database, make_engine, wait_for_database

    db = settings.database
    if args.create_db:
        for item in ensure_role_and_database(db.admin_url, db.user, db.password, db.name):
            print(f"created {item}")
    engine = make_engine(db)
    try:
        wait_for_database(engine, settings.startup_timeout_s)
        before = migrations.current_revision(engine)
        if args.downgrade:
            migrations.downgrade(db.url(), args.downgrade)
        else:
            for step in migrations.upgrade_or_adopt(engine, db.url()):
                print(f"database {db.display()}: {step}")
        after = migrations.current_revision(engine)
    finally:
        engine.dispose()
    if before == after:
        print(f"database {db.display()} already at revision {after}: nothing to do")
    else:
        print(f"database {db.display()} migrated from {before} to {after}")
    return 0


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from command_handler.bootstrap import synchronize

    report = synchronize(settings, prune=args.prune, partitions=args.partitions)
    for line in report.lines():
        print(line)
    print("synchronized: " + ("changes made" if report.changed else "nothing to change"))
    return 0


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives every thread that allocates its own malloc arena; librdkafka runs many threads.
    Two arenas keep the resident memory of the handler low at no measurable cost."""
    import contextlib
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).mallopt(-8, arenas)  # M_ARENA_MAX


STOP_WITHIN_S = 9.0  # after SIGTERM the process is gone within this long, whatever it waits for


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    import faulthandler
    import signal

    limit_malloc_arenas()
    # `kill -USR1 <pid>` writes every thread's stack to stderr: what a handler that seems stuck is doing
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    from command_handler.adapters.health import Health, serve_health
    from command_handler.adapters.metrics import Metrics
    from command_handler.bootstrap import build_handler
    from command_handler.service_layer.loop import HandlerLoop

    health, metrics = Health(), Metrics()
    if settings.health_port:
        serve_health(health, settings.health_port, settings.health_host, metrics)
        log.info(
            "health endpoint on %s:%d: /health/live, /health/ready, /metrics",
            settings.health_host,
            settings.health_port,
        )
    log.info(
        "starting: kafka %s, registry %s, database %s, group %s",
        settings.kafka.brokers,
        settings.registry.display(),
        settings.database.display(),
        settings.kafka.group_id,
    )
    # Signal handlers come first: during the start-up wait a SIGTERM ends the process at once (as PID 1
    # in a container, a signal without a handler would be ignored); once the loop runs, it drains and stops,
    # and a watchdog ends the process should a shutdown step wait on a broker that is away.
    running: list[HandlerLoop] = []

    def on_signal(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if not running:
            raise StartupInterrupted(name)
        running[0].request_stop(name)
        threading.Thread(target=_exit_after, args=(STOP_WITHIN_S, name), name="stop-watchdog", daemon=True).start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        running.append(build_handler(settings, health, sync_first=args.sync, metrics=metrics))
    except StartupInterrupted as stop:
        log.info("stopped during start-up (%s)", stop)
        return 0
    freeze_startup_objects()
    return running[0].run()


def freeze_startup_objects() -> None:
    """The modules, schemas and clients made at start live as long as the process: moved out of the
    garbage collector's sight (``gc.freeze``), so that its full collections no longer walk them. With
    them, one full collection took about 55 ms (77,000 objects after the imports alone), a pause every
    command in flight waited through."""
    import gc

    gc.collect()
    gc.freeze()


def _exit_after(seconds: float, why: str) -> None:
    """The last resort of a shutdown that waits too long (outputs for a broker that is away): what was not
    committed comes again, so ending here loses nothing."""
    time.sleep(seconds)
    log.warning(
        "still stopping %.0fs after %s: exiting now (what was not committed will be handled again)", seconds, why
    )
    logging.shutdown()
    os._exit(0)


class StartupInterrupted(BaseException):
    """SIGTERM or SIGINT arrived while the handler was still waiting for its services: a BaseException, so
    that no retry of the start-up wait (which catches ``Exception``) swallows it."""


def build_parser(tools: bool = True) -> argparse.ArgumentParser:
    """The command line; ``tools``: with the subcommands of the installed development tools."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="command-handler",
        description="The open-bank command handler: ConfirmAccountCreation and ConfirmMoneyTransfer "
        "commands from Kafka, balances in Postgres, Avro answers through a Schema Registry.",
        epilog=variables_epilog(),
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "migrate",
        help="upgrade the database schema to the latest revision (Alembic); adopts a reference database in place",
        epilog=variables_epilog("database", "general"),
        formatter_class=formatter,
    )
    p.add_argument(
        "--create-db",
        action="store_true",
        help="first create the DB_USER role and DB_NAME database through DB_ADMIN_URL (local use)",
    )
    p.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION (e.g. base) instead")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "sync",
        help="create the topics and register the schema subjects of the topology",
        epilog=variables_epilog("kafka", "registry", "general"),
        formatter_class=formatter,
    )
    p.add_argument("--prune", action="store_true", help="also delete topics the topology does not name")
    p.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="create missing topics with N partitions instead of the topology's (local experiments)",
    )
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser(
        "run",
        help="run the command handler until SIGTERM or SIGINT",
        epilog=variables_epilog(),
        formatter_class=formatter,
    )
    p.add_argument("--sync", action="store_true", help="run the synchronizer first (create topics, register schemas)")
    p.set_defaults(func=cmd_run)

    for tool in sorted(entry_points(group=TOOLS_GROUP), key=lambda e: e.name) if tools else ():
        tool.load()(sub, formatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(tools=not (argv and argv[0] in PRODUCT_COMMANDS)).parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as err:
        print(f"command-handler: {err}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level, settings.log_format)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, settings)
    except KeyboardInterrupt:
        return 130
    except OperatorError as err:
        log.error("%s", err)
        return EXIT_FAILURE
