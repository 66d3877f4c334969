#!/usr/bin/env bash
# scripts/bench.sh [BENCH OPTIONS]: the throughput benchmark on a fresh stack of
# its own (same ports and databases as scripts/loop.sh), stopped afterwards;
# BROKER=kafka|tansu chooses the broker (default kafka). The handler runs from
# .venv-product, the product's own environment (as it ships).
# Options go to `command-handler bench` (--transfers, --accounts, --pgbench-seconds).
# Run scripts/prepare.sh once first.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/latency-stack.sh
source scripts/lib/latency-stack.sh
trap '"$ch" stack down >/dev/null || true' EXIT
"$ch" stack up --fresh >/dev/null
# shellcheck disable=SC1091
source "$STACK_DIR/env"
"$ch" bench --handler-python "$handler_python" "$@"
