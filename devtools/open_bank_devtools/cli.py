"""The development tools' subcommands of ``command-handler``: stack, latency, report, bench.

They are registered through the ``command_handler.subcommands`` entry points of
this distribution (see ``devtools/pyproject.toml``), so an installation of the
product alone has none of them, and one with the tools keeps every command
line of the scripts and docs. Heavy imports happen inside the commands only.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from command_handler.config import Settings
from command_handler.entrypoints.cli import EXIT_CONFIG, EXIT_FAILURE, variables_epilog

Subparsers = Any  # argparse's _SubParsersAction, which has no public name
Formatter = type[argparse.HelpFormatter]


# -- stack ----------------------------------------------------------------------------------


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from open_bank_devtools.stack.local_stack import LocalStack, StackConfig

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


def add_stack(sub: Subparsers, formatter: Formatter) -> None:
    from open_bank_devtools.stack.variables import STACK_VARIABLES

    own = "\n".join(f"  {name:<32} {meaning}" for name, meaning in STACK_VARIABLES)
    p = sub.add_parser(
        "stack",
        help="start, stop or show the embedded local stack (Kafka or Tansu, Apicurio Registry, its own PostgreSQL)",
        description="The local stack for development and tests: never used in production. It runs Apache Kafka "
        "(KRaft, jars from Maven Central) or Tansu, Apicurio Registry (jars from Maven Central, a JDK >= 21), and a PostgreSQL cluster of its own "
        "in STACK_DIR; `up` prints the environment to use and writes it to $STACK_DIR/env.",
        epilog=f"stack variables:\n{own}\n\n" + variables_epilog("database"),
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


# -- latency ----------------------------------------------------------------------------------


def cmd_latency(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace
    from pathlib import Path

    from open_bank_devtools.loadtest.latency import LatencyConfig, LatencyTest, rss_trend
    from open_bank_devtools.loadtest.resources import ResourceSampler, pids_of, postgres_pids, process_tree
    from open_bank_devtools.stack.local_stack import StackConfig, stack_pid

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
    trend = rss_trend(path)
    if trend is not None:
        print(trend.line())
    print(f"{path}: {test.time_outs} time-outs")
    print(f"{path}: {loops} loops ({'met' if ok else 'did not meet'} the criterion of {config.min_loops})")
    return 0 if ok else EXIT_FAILURE


def add_latency(sub: Subparsers, formatter: Formatter) -> None:
    p = sub.add_parser(
        "latency",
        help="run one end-to-end latency test against a running handler (see scripts/loop.sh)",
        epilog=variables_epilog("kafka", "registry"),
        formatter_class=formatter,
    )
    p.add_argument("--config", default="reference", help="preset name (reference, ci, soak) or TOML file")
    p.add_argument("--results", default="results", help="folder of the results files (default: results)")
    p.add_argument("--name", help="name of the results file (the variant), instead of the config's")
    p.add_argument("--handler-pid", type=int, help="PID of the handler, to sample its CPU and memory")
    p.add_argument("--broker-pid", type=int, help="PID of the broker (default: the local stack's)")
    p.set_defaults(func=cmd_latency)


def cmd_browser_latency(args: argparse.Namespace, settings: Settings) -> int:
    import logging
    import os
    from dataclasses import replace
    from pathlib import Path

    from open_bank_devtools.loadtest.browser import BrowserConfig, BrowserLatencyTest
    from open_bank_devtools.loadtest.resources import ResourceSampler, pids_of, postgres_pids, process_tree
    from open_bank_devtools.stack.local_stack import StackConfig, stack_pid

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = BrowserConfig.load(args.config)
        if args.name:
            config = replace(config, name=args.name)
    except (ValueError, TypeError) as err:
        print(f"command-handler browser-latency: {err}", file=sys.stderr)
        return EXIT_CONFIG
    stack = StackConfig.from_env()
    url = args.url or os.environ.get("ENDPOINT_URL") or f"http://127.0.0.1:{stack.endpoint_port or 8888}/"
    cluster = stack.cluster()
    postgres = process_tree(cluster.pid) if stack.own_postgres and cluster.initialized else postgres_pids
    sampler = ResourceSampler(
        {
            "handler": pids_of(args.handler_pid),
            "endpoint": pids_of(args.endpoint_pid or stack_pid(stack, "endpoint")),
            "broker": pids_of(args.broker_pid or stack_pid(stack, "broker")),
            "postgres": postgres,
        }
    )
    path, loops = BrowserLatencyTest(url, config, Path(args.results), sampler).run()
    ok = loops >= config.min_loops
    print(f"{path}: {loops} loops ({'met' if ok else 'did not meet'} the criterion of {config.min_loops})")
    return 0 if ok else EXIT_FAILURE


def add_browser_latency(sub: Subparsers, formatter: Formatter) -> None:
    p = sub.add_parser(
        "browser-latency",
        help="the reference's latency test in headless Chromium, against the endpoint's page (see scripts/loop.sh)",
        formatter_class=formatter,
    )
    p.add_argument("--config", default="browser-reference", help="preset (browser-reference, browser-ci) or TOML")
    p.add_argument("--url", help="the bank's page (default: ENDPOINT_URL, else the local stack's endpoint)")
    p.add_argument("--results", default="results", help="folder of the results files (default: results)")
    p.add_argument("--name", help="name of the results file (the variant), instead of the config's")
    p.add_argument("--handler-pid", type=int, help="PID of the handler, to sample its CPU and memory")
    p.add_argument("--endpoint-pid", type=int, help="PID of the endpoint (default: the local stack's)")
    p.add_argument("--broker-pid", type=int, help="PID of the broker (default: the local stack's)")
    p.set_defaults(func=cmd_browser_latency)


def cmd_endpoint_probe(args: argparse.Namespace, settings: Settings) -> int:
    import json
    import os

    from open_bank_devtools.loadtest.endpoint_probe import run

    url = (args.url or os.environ.get("ENDPOINT_URL") or "http://127.0.0.1:8888/").rstrip("/")
    print(json.dumps(run(url.replace("http", "ws", 1) + "/graphql-ws", args.seconds)))
    return 0


def add_endpoint_probe(sub: Subparsers, formatter: Formatter) -> None:
    p = sub.add_parser(
        "endpoint-probe",
        help="deposits through the GraphQL endpoint: p50 until the streamed row (run beside `latency`)",
        formatter_class=formatter,
    )
    p.add_argument("--url", help="the endpoint (default: ENDPOINT_URL, else http://127.0.0.1:8888/)")
    p.add_argument("--seconds", type=float, default=60, help="how long to probe (default 60)")
    p.set_defaults(func=cmd_endpoint_probe)


# -- report -----------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from open_bank_devtools.loadtest.report import write_report

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


def add_report(sub: Subparsers, formatter: Formatter) -> None:
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


# -- bench ------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from open_bank_devtools.loadtest.bench import run_bench

    profile = Path(args.profile) if args.profile else None
    run_bench(
        args.transfers,
        args.accounts,
        args.pgbench_seconds,
        Path(args.results),
        profile=profile,
        handler_python=args.handler_python,
    )
    return 0


def add_bench(sub: Subparsers, formatter: Formatter) -> None:
    p = sub.add_parser(
        "bench",
        help="throughput benchmark: transfers end to end through a handler, against pgbench's ceiling",
        description="Needs a running stack (KAFKA_BROKERS, SCHEMA_REGISTRY_URL, DB_*) and pgbench. Uses its own "
        "database (balancedb_bench) and topics, and starts a handler process for the run.",
        epilog=variables_epilog("kafka", "registry", "database"),
        formatter_class=formatter,
    )
    p.add_argument("--transfers", type=int, default=20_000, help="number of ConfirmMoneyTransfer (default 20000)")
    p.add_argument("--accounts", type=int, default=1_000, help="pre-created accounts (default 1000)")
    p.add_argument("--pgbench-seconds", type=int, default=15, help="how long pgbench runs (default 15)")
    p.add_argument("--results", default="results", help="folder of the results file (default: results)")
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="also profile the handler while it works with py-spy (installed separately) into FILE "
        "(collapsed stacks; the CPU figure then includes the sampling's cost)",
    )
    p.add_argument(
        "--handler-python",
        metavar="PYTHON",
        help="the interpreter that runs the handler, e.g. a product-only environment's "
        "(default: this one; scripts/bench.sh gives .venv-product/bin/python)",
    )
    p.set_defaults(func=cmd_bench)


# -- chaos ------------------------------------------------------------------------------------


def cmd_chaos(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from open_bank_devtools.chaos.campaign import PRESETS, Campaign

    preset = PRESETS[args.preset]()
    directory = Path(args.dir) if args.dir else None
    return Campaign(preset, directory, transactions=args.transactions, seed=args.seed).run()


def add_chaos(sub: Subparsers, formatter: Formatter) -> None:
    p = sub.add_parser(
        "chaos",
        help="fault campaign: 3 handlers under load while handlers, database, registry and broker fail",
        description="Starts a local stack of its own (Apache Kafka, Apicurio Registry, its own PostgreSQL) on free "
        "ports, 3 handler processes in one group, a steady load, and a schedule of faults: kill -9, SIGSTOP past "
        "the session timeout, PostgreSQL stopped (immediate), the database read-only, the registry down, the "
        "broker restarted, bursts of hostile records. Then it audits what came out of Kafka and the database and "
        "prints one line: chaos: sent N answered N lost 0 conflicting 0 wrongly-dead-lettered 0 money-delta 0 "
        "ledger-mismatches 0 events-missing 0 faults K. Exit 0 only when every figure is 0.",
        formatter_class=formatter,
    )
    p.add_argument("--preset", choices=("ci", "full"), default="ci", help="ci: ~4 minutes; full: ~10 minutes")
    p.add_argument("--transactions", action="store_true", help="handlers with KAFKA_TRANSACTIONS=true")
    p.add_argument("--seed", type=int, default=20261123, help="seed of the load, the faults and the corpus")
    p.add_argument("--dir", help="folder of the stack and the handlers' logs (default: a new temporary folder)")
    p.set_defaults(func=cmd_chaos)
