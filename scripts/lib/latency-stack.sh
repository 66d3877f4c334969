# Sourced by loop.sh and bench.sh: the environment of the latency/benchmark
# stack, apart from a development stack (its own directory, ports 9192/9193/
# 8181/8191/5542, the handler's health endpoint on 8189), the broker BROKER (kafka
# or tansu, default kafka), the command-handler executable as $ch (the tools), and
# $handler_python, the interpreter of the product's own environment that runs the handler under test. The GraphQL
# endpoint is started (on 8288) only with LATENCY_ENDPOINT=1, as loop.sh does for
# the browser test: beside the handler's latency test or the benchmark it reads
# every output and takes CPU from the handler on this 2-core machine (at 200
# commands/s it doubled the probe's median, 13.5 -> 24 ms, and its p99, 32 -> 267 ms).
ch=.venv/bin/command-handler
[ -x "$ch" ] || { echo "$(basename "$0"): no .venv: run scripts/prepare.sh first" >&2; exit 2; }
# the handler under test runs from the product's own environment, as it ships (scripts/setup.sh makes it);
# HANDLER_PYTHON names another interpreter (the tests use it to check which one starts the handler)
handler_python="${HANDLER_PYTHON:-$PWD/.venv-product/bin/python}"
if [ -z "${HANDLER_PYTHON:-}" ]; then
  if [ ! -x "$handler_python" ] || [ pyproject.toml -nt .venv-product/.installed ]; then
    echo "$(basename "$0"): .venv-product is missing or older than pyproject.toml: run scripts/setup.sh bench" >&2
    exit 2
  fi
fi
export STACK_BROKER="${BROKER:-kafka}"
case "$STACK_BROKER" in kafka|tansu) ;; *) echo "$(basename "$0"): BROKER must be kafka or tansu" >&2; exit 2 ;; esac
export STACK_DIR="${LATENCY_STACK_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/open-bank-latency}"
export STACK_BROKER_PORT="${LATENCY_BROKER_PORT:-9192}"
export STACK_CONTROLLER_PORT="${LATENCY_CONTROLLER_PORT:-9193}"
export STACK_REGISTRY_PORT="${LATENCY_REGISTRY_PORT:-8181}"
export STACK_REGISTRY_HEALTH_PORT="${LATENCY_REGISTRY_HEALTH_PORT:-8191}"
export STACK_DB_PORT="${LATENCY_DB_PORT:-5542}"
export HEALTH_PORT="${LATENCY_HEALTH_PORT:-8189}"
if [ "${LATENCY_ENDPOINT:-0}" = 1 ]; then
  export STACK_ENDPOINT_PORT="${LATENCY_ENDPOINT_PORT:-8288}"
else
  export STACK_ENDPOINT_PORT=0
fi
export STACK_REGISTRY_DB=schema_registry_latency
export DB_NAME=balancedb_latency
