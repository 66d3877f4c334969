# Sourced by loop.sh and bench.sh: the environment of the latency/benchmark
# stack, apart from a development stack (its own directory, ports 9192/9193/
# 8181/8191/5542, the handler's health endpoint on 8189, the GraphQL endpoint on 8288), the broker BROKER (kafka
# or tansu, default kafka), and the command-handler executable as $ch.
ch=.venv/bin/command-handler
[ -x "$ch" ] || { echo "$(basename "$0"): run scripts/prepare.sh first" >&2; exit 2; }
export STACK_BROKER="${BROKER:-kafka}"
case "$STACK_BROKER" in kafka|tansu) ;; *) echo "$(basename "$0"): BROKER must be kafka or tansu" >&2; exit 2 ;; esac
export STACK_DIR="${LATENCY_STACK_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/open-bank-latency}"
export STACK_BROKER_PORT="${LATENCY_BROKER_PORT:-9192}"
export STACK_CONTROLLER_PORT="${LATENCY_CONTROLLER_PORT:-9193}"
export STACK_REGISTRY_PORT="${LATENCY_REGISTRY_PORT:-8181}"
export STACK_REGISTRY_HEALTH_PORT="${LATENCY_REGISTRY_HEALTH_PORT:-8191}"
export STACK_DB_PORT="${LATENCY_DB_PORT:-5542}"
export HEALTH_PORT="${LATENCY_HEALTH_PORT:-8189}"
export STACK_ENDPOINT_PORT="${LATENCY_ENDPOINT_PORT:-8288}"
export STACK_REGISTRY_DB=schema_registry_latency
export DB_NAME=balancedb_latency
