#!/usr/bin/env bash
# Set up, once and idempotently, everything the latency tests and the benchmark
# need: the virtual environment with the bench extras, PostgreSQL running with
# the project's role and database, pgbench, and the results folder.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh bench
if ! command -v pgbench >/dev/null 2>&1; then
  echo "prepare: installing pgbench"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
fi
.venv/bin/command-handler migrate --create-db
mkdir -p results
echo "prepare: ready; run scripts/loop.sh N [CONFIG]"
