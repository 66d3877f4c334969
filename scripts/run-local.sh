#!/usr/bin/env bash
# Set up what is missing, bring up the embedded local stack (Apache Kafka, or
# Tansu with BROKER=tansu; Apicurio Registry as the Schema Registry; a PostgreSQL cluster of the
# stack's own, migrated), and run the command handler on it with the
# synchronizer first, until Ctrl-C (SIGINT) or SIGTERM.
# `.venv/bin/command-handler stack down` stops the stack afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh local
.venv/bin/command-handler stack up ${BROKER:+--broker "$BROKER"}
# shellcheck disable=SC1090
source "${STACK_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/open-bank-stack}/env"
exec .venv/bin/command-handler run --sync
