#!/usr/bin/env bash
# scripts/loop.sh N [CONFIG]: N times, restart the local stack from clean (empty
# broker, fresh database), create topics and schemas, start the handler, run one
# latency test (CONFIG: a preset, reference or ci, or a TOML file), stop
# everything. Exits 0 only if every run met its criterion (at least min_loops
# loops before it ended). Results: $RESULTS_DIR/<name>-<date>.csv (default
# results/), handler logs in $RESULTS_DIR/logs, and at the end the report of all
# runs there in $RESULTS_DIR/report. Run scripts/prepare.sh once first.
#
# A CONFIG whose name starts with "browser" (browser-reference, browser-ci) runs
# the browser test instead: headless Chromium on the GraphQL endpoint's page,
# with load generators over its WebSocket (run scripts/setup.sh bench or test
# first for Chromium).
#
# BROKER=kafka|tansu chooses the broker (default kafka). It uses a stack of its
# own (ports 9192/9193/8181/5542, database balancedb_latency), so a
# development stack on the default ports is left alone. LATENCY_NAME names the
# results (the variant; default CONFIG-BROKER, e.g. reference-kafka); LATENCY_PARTITIONS creates the topics with fewer
# partitions than the reference's 24 (an experiment on the local broker).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:?usage: scripts/loop.sh N [CONFIG]}"
config="${2:-reference}"
results="${RESULTS_DIR:-results}"
# the GraphQL endpoint only for the browser test (see scripts/lib/latency-stack.sh)
case "$(basename "$config")" in browser*) export LATENCY_ENDPOINT=1 ;; esac
# shellcheck source=scripts/lib/latency-stack.sh
source scripts/lib/latency-stack.sh
export STATS_INTERVAL_S="${STATS_INTERVAL_S:-10}"
mkdir -p "$results/logs"

handler=""
cleanup() {
  if [ -n "$handler" ] && kill -0 "$handler" 2>/dev/null; then
    kill -TERM "$handler"; wait "$handler" || true
  fi
  "$ch" stack down >/dev/null || true
}
trap cleanup EXIT

# the variant: LATENCY_NAME, else the config's file name and the broker (e.g. reference-kafka)
name="${LATENCY_NAME:-$(basename "$config" .toml)-$STACK_BROKER}"
failed=0
for run in $(seq 1 "$runs"); do
  echo "== run $run of $runs ($config)"
  "$ch" stack up --fresh >/dev/null
  # shellcheck disable=SC1091
  source "$STACK_DIR/env"
  "$ch" sync ${LATENCY_PARTITIONS:+--partitions "$LATENCY_PARTITIONS"} >/dev/null
  log="$results/logs/handler-$(date +%Y-%m-%d-%H-%M-%S)-run$run.log"
  "$handler_python" -m command_handler run >"$log" 2>&1 &
  handler=$!
  # ready when its health endpoint says so (it consumes its partitions)
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$HEALTH_PORT/health/ready" >/dev/null && break
    kill -0 "$handler" 2>/dev/null || { echo "loop: handler exited, see $log" >&2; exit 1; }
    sleep 0.1
  done
  case "$(basename "$config")" in
    browser*)
      # the endpoint answers once the topics and subjects exist (the sync above)
      for _ in $(seq 1 600); do
        curl -sf "${ENDPOINT_URL}health/ready" >/dev/null && break
        sleep 0.1
      done
      "$ch" browser-latency --config "$config" --results "$results" --name "$name" --handler-pid "$handler" \
        || failed=1
      ;;
    *)
      "$ch" latency --config "$config" --results "$results" --name "$name" --handler-pid "$handler" || failed=1
      ;;
  esac
  kill -TERM "$handler"
  wait "$handler" || { echo "loop: handler did not stop cleanly, see $log" >&2; failed=1; }
  handler=""
  "$ch" stack down >/dev/null
done
# the summary table, charts and HTML page of every run in the results folder, pooled by variant
"$ch" report --results "$results" --out "$results/report" | tail -n 7
exit "$failed"
