# Sourced by loop.sh and bench.sh: the environment of the latency/benchmark
# stack, apart from a development stack (ports 9192/8181, its own databases),
# and the command-handler executable as $ch.
ch=.venv/bin/command-handler
[ -x "$ch" ] || { echo "$(basename "$0"): run scripts/prepare.sh first" >&2; exit 2; }
export STACK_DIR="${LATENCY_STACK_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/open-bank-latency}"
export STACK_BROKER_PORT="${LATENCY_BROKER_PORT:-9192}"
export STACK_REGISTRY_PORT="${LATENCY_REGISTRY_PORT:-8181}"
export STACK_REGISTRY_DB=schema_registry_latency
export DB_NAME=balancedb_latency
