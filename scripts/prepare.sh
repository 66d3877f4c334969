#!/usr/bin/env bash
# Set up, once and idempotently, everything the latency tests and the benchmark
# need: the Debian packages (PostgreSQL's binaries and pgbench, a JDK and Maven),
# the virtual environment with the bench extras, Apache Kafka's jars and
# Apicurio Registry in the cache, and the results folder. The stack itself starts in loop.sh/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh bench
.venv/bin/python -c "from open_bank_devtools.stack.kafka import ensure_jars; ensure_jars()"
.venv/bin/python -c "from open_bank_devtools.stack.apicurio import ensure_distribution; ensure_distribution()"
mkdir -p results
echo "prepare: ready; run scripts/loop.sh N [CONFIG] (BROKER=kafka|tansu)"
