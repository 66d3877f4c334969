#!/usr/bin/env bash
# Set up what is missing, bring up the embedded local stack (Apache Kafka, or
# Tansu with BROKER=tansu; Apicurio Registry as the Schema Registry; a PostgreSQL cluster of the
# stack's own, migrated; the GraphQL endpoint with the bank's page on
# 127.0.0.1:8888), and run the command handler on it with the synchronizer
# first, until Ctrl-C (SIGINT) or SIGTERM. It prints the page's address.
# `.venv/bin/command-handler stack down` stops the stack afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh local
.venv/bin/command-handler stack up ${BROKER:+--broker "$BROKER"}
# shellcheck disable=SC1090
source "${STACK_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/open-bank-stack}/env"
if [ -n "${ENDPOINT_URL:-}" ]; then
  echo
  echo "==> the bank is at ${ENDPOINT_URL} : open it, choose Client, log in with a new username and password"
  echo "    (8 characters or more each) and move money; Bank-employee lists every account. Ctrl-C stops the handler."
  echo
fi
exec .venv/bin/command-handler run --sync
