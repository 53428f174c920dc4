#!/usr/bin/env bash
# How an agent in StreamSync mode behaves while a backend is down (issue 10):
# VictoriaMetrics is unreachable for the server, the server keeps refusing the
# metrics batch (retryable) and keeps sending `flush` on heartbeats that report
# a backlog. Prints when each attempt failed (they must follow the backoff, not
# come back to back) and the agent's CPU over DURATION seconds.
#
#   bench/stream_backoff.sh [DURATION]      (BENCH_BUILD_DIR: default build)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
duration=${1:-60}
bin=${BENCH_BUILD_DIR:-build}/bin
work=$(mktemp -d /tmp/fleetd-stream-backoff-XXXXXX)
pids=()
trap 'stop_all; rm -rf "$work"' EXIT

start_backends "$work" "$bin"
export FLEET_ROUTE_METRICS=victoriametrics FLEET_ROUTE_EVENTS=clickhouse
export FLEET_ROUTE_LOGS=clickhouse
"$bin/fleetd-server" migrate 2>/dev/null
key=$("$bin/fleetd-server" keys create --device backoff-device --org backoff-org 2>/dev/null)
grpc_port=$(free_port)
admin_port=$(free_port)
http_port=$(free_port)
# The backend is "down": metrics go to a port nothing listens on.
FLEET_VICTORIAMETRICS_URL=http://127.0.0.1:9 FLEET_INSECURE=1 \
  FLEET_GRPC_ADDR=127.0.0.1:$grpc_port FLEET_HTTP_ADDR=127.0.0.1:$http_port \
  FLEET_ADMIN_ADDR=127.0.0.1:$admin_port "$bin/fleetd-server" serve 2>"$work/server.log" &
pids+=($!)
wait_for "curl -fsS http://127.0.0.1:$admin_port/healthz" 60

FLEET_SERVER_URL=http://127.0.0.1:$grpc_port FLEET_API_KEY=$key DEVICE_ID=backoff-device \
  FLEET_DATA_DIR=$work/agent FLEET_TIER=1 SYNC_INTERVAL=5s FLEET_COLLECT_INTERVAL=5s \
  FLEET_SYNC_STREAM=1 FLEET_INGEST_ADDR= FLEET_METRICS_ADDR= \
  "$bin/fleetd" run 2>"$work/agent.log" &
agent=$!
pids+=($agent)
wait_for "grep -q 'failed (attempt' $work/agent.log" 60
ticks() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
t0=$(ticks)
sleep "$duration"
t1=$(ticks)
hz=$(getconf CLK_TCK)
echo "attempts that failed (time, attempt):"
grep 'failed (attempt' "$work/agent.log" | awk '{print "  " $2, "attempt", $12}' | tr -d ','
echo "agent CPU over ${duration} s: $(awk -v t=$((t1 - t0)) -v hz="$hz" -v d="$duration" \
  'BEGIN { printf "%.2f %% of a core", 100 * t / hz / d }')"
