#!/usr/bin/env bash
# Set up what is missing, bring up the embedded local stack (Tansu broker,
# local Schema Registry, Postgres database migrated), create the topics and
# schema subjects, and show the stack's status. `command-handler stack down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh local
.venv/bin/command-handler stack up
# shellcheck disable=SC1090
source "${STACK_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/open-bank-stack}/env"
.venv/bin/command-handler sync
.venv/bin/command-handler stack status
