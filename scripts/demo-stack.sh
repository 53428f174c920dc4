#!/usr/bin/env bash
# The demo: real backends, the server (TLS 1.3) and an agent syncing this machine's
# metrics and logs; then a summary of what arrived in each backend.
# Run through scripts/demo.sh (which builds first). DEMO_SECONDS (default 40) sets how
# long the agent runs before the summary. Set FLEET_LOKI_URL to a reachable Loki to
# route logs there; otherwise logs go to ClickHouse through the routing settings.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(pwd)/build/bin
seconds=${DEMO_SECONDS:-40}
work=$(mktemp -d /tmp/fleetd-demo.XXXXXX)
pids=()

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
cleanup() {
  stop_all
  rm -rf "$work"
}
trap cleanup EXIT

say "starting PostgreSQL, VictoriaMetrics and ClickHouse (temporary, loopback only)"
start_backends "$work" "$bin"
cat "$work/devstack.log"

export FLEET_ROUTE_METRICS=victoriametrics FLEET_ROUTE_EVENTS=clickhouse
if [[ -n ${FLEET_LOKI_URL:-} ]] && curl -fsS --max-time 3 "$FLEET_LOKI_URL/ready" >/dev/null; then
  export FLEET_ROUTE_LOGS=loki
  echo "logs go to Loki at $FLEET_LOKI_URL"
else
  unset FLEET_LOKI_URL
  export FLEET_ROUTE_LOGS=clickhouse
  echo "no Loki reachable (Loki is not packaged for Debian): logs go to ClickHouse" \
    "(FLEET_ROUTE_LOGS=clickhouse); set FLEET_LOKI_URL to use a real Loki"
fi

say "creating a device key and TLS certificates"
bash scripts/gen-dev-certs.sh "$work/certs" >/dev/null
"$bin/fleetd-server" migrate 2>/dev/null
key=$("$bin/fleetd-server" keys create --device demo-device --org demo-org 2>/dev/null)
echo "device demo-device in org demo-org: key ${key:0:20}... (stored hashed in PostgreSQL)"

grpc_port=$(free_port)
http_port=$(free_port)
admin_port=$(free_port)
say "starting fleetd-server (gRPC :$grpc_port TLS 1.3, Connect :$http_port, admin :$admin_port)"
FLEET_TLS_CERT=$work/certs/server.pem FLEET_TLS_KEY=$work/certs/server.key \
  FLEET_GRPC_ADDR=127.0.0.1:$grpc_port FLEET_HTTP_ADDR=127.0.0.1:$http_port \
  FLEET_ADMIN_ADDR=127.0.0.1:$admin_port \
  "$bin/fleetd-server" serve 2>"$work/server.log" &
pids+=($!)
wait_for "curl -fsS http://127.0.0.1:$admin_port/readyz" 60 || { cat "$work/server.log"; exit 1; }
curl -fsS "http://127.0.0.1:$admin_port/readyz"

say "starting the agent (fleetd run) on this machine"
ingest_port=$(free_port)
metrics_port=$(free_port)
app_log=$work/app.log
: >"$app_log"
export FLEET_SERVER_URL=https://127.0.0.1:$grpc_port FLEET_CA_FILE=$work/certs/ca.pem
export FLEET_API_KEY=$key DEVICE_ID=demo-device FLEET_DATA_DIR=$work/agent
export SYNC_INTERVAL=5s FLEET_COLLECT_INTERVAL=5s FLEET_LOG_FILES=$app_log
export FLEET_INGEST_ADDR=127.0.0.1:$ingest_port FLEET_METRICS_ADDR=127.0.0.1:$metrics_port
"$bin/fleetd" run 2>"$work/agent.log" &
pids+=($!)
wait_for "$bin/fleetd status" 60 || { cat "$work/agent.log"; exit 1; }
grep -m1 "tier" "$work/agent.log" || true

say "running for ${seconds}s: collecting system metrics, tailing $app_log, apps pushing data"
for ((t = 0; t < seconds; t += 5)); do
  echo "$(date -u +%FT%TZ) INFO demo app heartbeat $t" >>"$app_log"
  echo "$(date -u +%FT%TZ) ERROR demo app simulated failure $t" >>"$app_log"
  curl -fsS -X POST "http://127.0.0.1:$ingest_port/v1/metrics" \
    --data-binary "demo_app_requests_total{route=\"/api\"} $((t * 3))" || true
  curl -fsS -X POST "http://127.0.0.1:$ingest_port/v1/logs" \
    --data-binary "{\"level\":\"info\",\"message\":\"pushed by an app at ${t}s\",\"source\":\"demo-app\"}" \
    || true
  sleep 5
  "$bin/fleetd" status 2>/dev/null |
    awk '/^sync:/ {state=$2} /metrics_synced:/ {m=$2} /logs_synced:/ {l=$2}
         /^  metrics: unsynced/ {b=$3} END {printf "  agent: %s, metrics synced %s, logs synced %s, metrics backlog %s\n", state, m, l, b}' || true
done
"$bin/fleetd" sync now >/dev/null 2>&1 || true

say "what arrived"
curl -fsS "$FLEET_VICTORIAMETRICS_URL/internal/force_flush" >/dev/null || true
sleep 1
series=$(curl -fsS "$FLEET_VICTORIAMETRICS_URL/api/v1/series" \
  --data-urlencode 'match[]={device_id="demo-device"}' | { grep -o '"__name__"' || true; } | wc -l)
echo "VictoriaMetrics: $series series from demo-device; latest values of a few:"
for q in 'system_cpu_usage_percent{device_id="demo-device",cpu="all"}' \
  'system_memory_available_bytes{device_id="demo-device"}' \
  'demo_app_requests_total{device_id="demo-device"}'; do
  # The export API returns raw samples at once (instant queries skip the last 30 s).
  value=$(curl -fsS "$FLEET_VICTORIAMETRICS_URL/api/v1/export" --data-urlencode "match[]=$q" |
    tail -1 | { grep -o '"values":\[[^]]*\]' || true; } | sed -E 's/.*[[,]([^],]*)\]$/\1/')
  echo "  $q => ${value:-no sample yet}"
done
ch() { curl -fsS "$FLEET_CLICKHOUSE_URL/" --data-binary "$1"; }
if [[ $FLEET_ROUTE_LOGS == clickhouse ]]; then
  echo "ClickHouse logs: $(ch "SELECT count() FROM fleetd.logs FINAL WHERE device_id = 'demo-device'") entries; latest:"
  ch "SELECT level, source, message FROM fleetd.logs FINAL WHERE device_id = 'demo-device' ORDER BY timestamp_ms DESC LIMIT 3 FORMAT TSV" |
    sed 's/^/  /'
else
  echo "Loki: query {device_id=\"demo-device\"} at $FLEET_LOKI_URL"
fi
echo "PostgreSQL devices:"
psql "$FLEET_POSTGRES_DSN" -At -F ' | ' -c \
  "SELECT device_id, org_id, tier, hostname, agent_version, last_seen FROM devices" | sed 's/^/  /'
echo "PostgreSQL sync ledger: $(psql "$FLEET_POSTGRES_DSN" -At -c \
  "SELECT count(*) || ' batches, ' || coalesce(sum(record_count), 0) || ' records' FROM sync_ledger")"
say "agent status"
"$bin/fleetd" status
say "server metrics (excerpt)"
curl -fsS "http://127.0.0.1:$admin_port/metrics" |
  { grep -E '^fleetd_(batches_total|backend_records_written_total)' || true; } | sed 's/^/  /'
echo
echo "demo done: stopping the agent, the server and the backends"
