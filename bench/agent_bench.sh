#!/usr/bin/env bash
# Agent resource use per tier while syncing a steady stream (issue 5 figures):
# CPU time and peak RSS of `fleetd run`, bytes on the wire per metric sample, and the
# sync round trip P50/P95/P99 against a local server. Writes bench/results/agent.md.
#
#   bench/agent_bench.sh    (AGENT_BENCH_SECONDS, default 30; build/ must be built)
#
# Each tier runs with its own batch size, compression and storage, a 5 s sync interval
# (so that every tier syncs several times in the window) and an app pushing a steady
# stream through the local ingest endpoint: 1000 samples/s on tier 1, 100 on tier 2,
# 10 on tier 3 (rates a Raspberry-Pi-class device, a constrained one and a bare sensor
# produce).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(pwd)/build/bin
seconds=${AGENT_BENCH_SECONDS:-30}
out=${AGENT_BENCH_OUT:-bench/results/agent.md}
work=$(mktemp -d /tmp/fleetd-agent-bench.XXXXXX)
pids=()
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
cleanup() {
  stop_all
  rm -rf "$work"
}
trap cleanup EXIT

start_backends "$work" "$bin"
export FLEET_ROUTE_METRICS=victoriametrics FLEET_ROUTE_LOGS=clickhouse
export FLEET_ROUTE_EVENTS=clickhouse
"$bin/fleetd-server" migrate 2>/dev/null
grpc_port=$(free_port)
admin_port=$(free_port)
FLEET_INSECURE=1 FLEET_GRPC_ADDR=127.0.0.1:$grpc_port FLEET_HTTP_ADDR=127.0.0.1:$(free_port) \
  FLEET_ADMIN_ADDR=127.0.0.1:$admin_port "$bin/fleetd-server" serve 2>"$work/server.log" &
pids+=($!)
wait_for "curl -fsS http://127.0.0.1:$admin_port/readyz" 60 || { cat "$work/server.log"; exit 1; }

clk_tck=$(getconf CLK_TCK)
rows=()
for tier in 1 2 3; do
  case $tier in
  1) rate=1000 ;;
  2) rate=100 ;;
  3) rate=10 ;;
  esac
  device=bench-tier$tier
  key=$("$bin/fleetd-server" keys create --device "$device" --org bench 2>/dev/null)
  ingest_port=$(free_port)
  FLEET_SERVER_URL=http://127.0.0.1:$grpc_port FLEET_API_KEY=$key DEVICE_ID=$device \
    FLEET_DATA_DIR=$work/$device FLEET_TIER=$tier SYNC_INTERVAL=5s FLEET_COLLECT_SYSTEM=0 \
    FLEET_INGEST_ADDR=127.0.0.1:$ingest_port FLEET_METRICS_ADDR= \
    "$bin/fleetd" run 2>"$work/$device.log" &
  agent=$!
  pids+=($agent)
  export FLEET_DATA_DIR=$work/$device
  wait_for "$bin/fleetd status" 60 || { cat "$work/$device.log"; exit 1; }
  # One push every 100 ms carrying rate/10 samples, one per series.
  per_push=$((rate / 10))
  ticks=$((seconds * 10))
  start=$SECONDS
  for ((t = 0; t < ticks; t++)); do
    body=""
    for ((i = 0; i < per_push; i++)); do
      body+="bench_sensor_value{sensor=\"s$i\"} $((t * per_push + i))"$'\n'
    done
    curl -fsS -X POST "http://127.0.0.1:$ingest_port/v1/metrics" --data-binary "$body" \
      >/dev/null || true
    sleep 0.1
  done
  elapsed=$((SECONDS - start))
  "$bin/fleetd" sync now >/dev/null
  status=$("$bin/fleetd" status)
  read -r utime stime < <(awk '{print $14, $15}' "/proc/$agent/stat")
  hwm_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$agent/status")
  field() { awk -v k="  $1:" 'index($0, k) == 1 {print $2}' <<<"$status"; }
  round() { awk -v v="$1" 'BEGIN {printf "%.1f", v}'; }
  synced=$(field metrics_synced)
  bytes=$(field bytes_sent)
  cpu=$(awk -v u="$utime" -v s="$stime" -v t="$clk_tck" 'BEGIN {printf "%.2f", (u + s) / t}')
  bps=$(awk -v b="$bytes" -v n="$synced" 'BEGIN {if (n > 0) printf "%.1f", b / n; else print "-"}')
  rows+=("| $tier | $rate | $elapsed | $synced | $cpu | $((hwm_kb / 1024)) | $bps | $(round "$(field compression_ratio)") | $(round "$(field sync_latency_p50_ms)") | $(round "$(field sync_latency_p95_ms)") | $(round "$(field sync_latency_p99_ms)") |")
  kill -TERM "$agent"
  wait "$agent" 2>/dev/null || true
done

mkdir -p "$(dirname "$out")"
{
  echo "# Agent resource use per tier"
  echo
  echo "Measured by \`bench/agent_bench.sh\` on $(date -u +%F) ($(nproc) cores, load average" \
    "$(cut -d' ' -f1-3 /proc/loadavg) at the end). Each tier's agent ran ${seconds} s with a" \
    "5 s sync interval, receiving a steady stream through its ingest endpoint."
  echo
  echo "| tier | samples/s pushed | seconds | samples synced | agent CPU s | peak RSS MiB | wire bytes/sample | compression ratio | sync P50 ms | P95 ms | P99 ms |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >"$out"
cat "$out"
