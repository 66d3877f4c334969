"""``command-handler``: the one command line of the project. Thin: parse, configure, delegate."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from command_handler import __version__
from command_handler.config import ConfigError, Settings, describe_variables, load_settings
from command_handler.errors import OperatorError

log = logging.getLogger("command_handler")

EXIT_FAILURE = 1
EXIT_CONFIG = 2


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for noisy in ("alembic", "httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(quiet)


def _epilog(*groups: str) -> str:
    return "environment variables:\n" + describe_variables(groups or None)


def _stack_epilog() -> str:
    from command_handler.localstack.stack import STACK_VARIABLES

    own = "\n".join(f"  {name:<32} {meaning}" for name, meaning in STACK_VARIABLES)
    return f"stack variables:\n{own}\n\n" + _epilog("database")


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
            migrations.upgrade(db.url())
        after = migrations.current_revision(engine)
    finally:
        engine.dispose()
    if before == after:
        print(f"database {db.display()} already at revision {after}: nothing to do")
    else:
        print(f"database {db.display()} migrated from {before} to {after}")
    return 0


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from command_handler.localstack.stack import LocalStack, StackConfig

    config = StackConfig.from_env()
    if args.broker:
        config = replace(config, broker=args.broker)
    stack = LocalStack(config, settings)
    if args.action == "up":
        stack.up(timeout_s=settings.startup_timeout_s, fresh=args.fresh)
    elif args.action == "down":
        stack.down()
    else:
        return 0 if stack.status() else 3
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


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    import signal

    limit_malloc_arenas()

    from command_handler.adapters.health import Health, serve_health
    from command_handler.bootstrap import build_handler

    health = Health()
    if settings.health_port:
        serve_health(health, settings.health_port)
        log.info("health endpoint on port %d: /health/live, /health/ready", settings.health_port)
    log.info(
        "starting: kafka %s, registry %s, database %s, group %s",
        settings.kafka.brokers,
        settings.registry.url,
        settings.database.display(),
        settings.kafka.group_id,
    )
    loop = build_handler(settings, sync_first=args.sync, health=health)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, f: loop.request_stop(signal.Signals(s).name))
    return loop.run()


def cmd_latency(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace
    from pathlib import Path

    from command_handler.loadtest.latency import LatencyConfig, LatencyTest
    from command_handler.loadtest.resources import ResourceSampler, pids_of, postgres_pids, process_tree
    from command_handler.localstack.stack import StackConfig, stack_pid

    try:
        config = LatencyConfig.load(args.config)
        if args.name:
            config = replace(config, name=args.name)
    except (ValueError, TypeError) as err:
        print(f"command-handler latency: {err}", file=sys.stderr)
        return EXIT_CONFIG
    stack = StackConfig.from_env()
    broker_pid = args.broker_pid or stack_pid(stack, "broker")
    cluster = stack.cluster()
    # the stack's own PostgreSQL (the postmaster and its backends), else every postgres process here
    postgres = process_tree(cluster.pid) if stack.own_postgres and cluster.initialized else postgres_pids
    sampler = ResourceSampler(
        {"handler": pids_of(args.handler_pid), "broker": pids_of(broker_pid), "postgres": postgres}
    )
    test = LatencyTest(settings, config, Path(args.results), sampler)
    path, loops = test.run()
    ok = loops >= config.min_loops
    print(f"{path}: {loops} loops ({'met' if ok else 'did not meet'} the criterion of {config.min_loops})")
    return 0 if ok else EXIT_FAILURE


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from command_handler.loadtest.report import write_report

    mapping = {}
    for item in args.variant:
        variant, sep, prefix = item.partition("=")
        if not sep or not variant or not prefix:
            print(f"command-handler report: --variant takes VARIANT=PREFIX, got {item!r}", file=sys.stderr)
            return EXIT_CONFIG
        mapping[variant] = prefix
    try:
        written = write_report(Path(args.results), Path(args.out), mapping)
    except ValueError as err:
        print(f"command-handler report: {err}", file=sys.stderr)
        return EXIT_FAILURE
    print(Path(written["markdown"]).read_text())
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from command_handler.loadtest.bench import run_bench

    run_bench(args.transfers, args.accounts, args.pgbench_seconds, Path(args.results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="command-handler",
        description="The open-bank command handler: ConfirmAccountCreation and ConfirmMoneyTransfer "
        "commands from Kafka, balances in Postgres, Avro answers through a Schema Registry.",
        epilog=_epilog(),
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "migrate",
        help="upgrade the database schema to the latest revision (Alembic)",
        epilog=_epilog("database", "general"),
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
        "stack",
        help="start, stop or show the embedded local stack (Kafka or Tansu, local registry, its own PostgreSQL)",
        description="The local stack for development and tests: never used in production. It runs Apache Kafka "
        "(KRaft, jars from Maven Central) or Tansu, the local Schema Registry, and a PostgreSQL cluster of its own "
        "in STACK_DIR; `up` prints the environment to use and writes it to $STACK_DIR/env.",
        epilog=_stack_epilog(),
        formatter_class=formatter,
    )
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument(
        "--fresh",
        action="store_true",
        help="with up: stop the stack and drop its databases first (empty broker, empty database)",
    )
    p.add_argument(
        "--broker",
        choices=("kafka", "tansu"),
        help="with up: the broker to run (default: STACK_BROKER, else kafka)",
    )
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser(
        "sync",
        help="create the topics and register the schema subjects of the topology",
        epilog=_epilog("kafka", "registry", "general"),
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
        epilog=_epilog(),
        formatter_class=formatter,
    )
    p.add_argument("--sync", action="store_true", help="run the synchronizer first (create topics, register schemas)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "latency",
        help="run one end-to-end latency test against a running handler (see scripts/loop.sh)",
        epilog=_epilog("kafka", "registry"),
        formatter_class=formatter,
    )
    p.add_argument("--config", default="reference", help="preset name (reference, ci) or TOML file")
    p.add_argument("--results", default="results", help="folder of the results files (default: results)")
    p.add_argument("--name", help="name of the results file (the variant), instead of the config's")
    p.add_argument("--handler-pid", type=int, help="PID of the handler, to sample its CPU and memory")
    p.add_argument("--broker-pid", type=int, help="PID of the broker (default: the local stack's)")
    p.set_defaults(func=cmd_latency)

    p = sub.add_parser(
        "report",
        help="pool latency runs by variant: summary table, PNG charts and an HTML page",
        formatter_class=formatter,
    )
    p.add_argument("--results", default="results", help="folder of the run files (default: results)")
    p.add_argument("--out", default="results/report", help="folder to write to (default: results/report)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="VARIANT=PREFIX",
        help="runs whose file name starts with PREFIX belong to VARIANT (repeatable); "
        "default: the name part of each file",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "bench",
        help="throughput benchmark: transfers end to end through a handler, against pgbench's ceiling",
        description="Needs a running stack (KAFKA_BROKERS, SCHEMA_REGISTRY_URL, DB_*) and pgbench. Uses its own "
        "database (balancedb_bench) and topics, and starts a handler process for the run.",
        epilog=_epilog("kafka", "registry", "database"),
        formatter_class=formatter,
    )
    p.add_argument("--transfers", type=int, default=20_000, help="number of ConfirmMoneyTransfer (default 20000)")
    p.add_argument("--accounts", type=int, default=1_000, help="pre-created accounts (default 1000)")
    p.add_argument("--pgbench-seconds", type=int, default=15, help="how long pgbench runs (default 15)")
    p.add_argument("--results", default="results", help="folder of the results file (default: results)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as err:
        print(f"command-handler: {err}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, settings)
    except KeyboardInterrupt:
        return 130
    except OperatorError as err:
        log.error("%s", err)
        return EXIT_FAILURE
