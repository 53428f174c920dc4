#!/usr/bin/env bash
# Independent client test: starts real backends (fleetd-devstack), migrates, creates a
# device key, starts `fleetd-server serve` in plaintext on free loopback ports, generates
# the Connect-ES code from proto/ (npx buf generate) and runs connect_client.test.mjs with
# node's test runner against it: once against the gRPC and HTTP addresses, once with
# every protocol against a single port (FLEET_DOOR_ADDR). The front door serves all
# three: Connect, gRPC-Web over HTTP/1.1 and gRPC over h2c, and StreamSync over gRPC,
# Connect and gRPC-Web on h2c (FLEETD_DOOR=1 tells the test to try them all),
# then browser_cors.test.mjs: Debian's Chromium, through playwright-core, calls the door
# from a page of another origin (FLEET_DOOR_CORS_ORIGINS). Everything started here is
# stopped on exit (and, through PR_SET_PDEATHSIG, when this script is killed).
#
# usage: tests/node/run.sh FLEETD_SERVER_BINARY FLEETD_DEVSTACK_BINARY
# (ctest passes both; by hand, e.g. tests/node/run.sh build/bin/fleetd-server build/bin/fleetd-devstack)
# Exit status: node's, so a failing client test fails the ctest.
set -euo pipefail
if (($# != 2)); then
  echo "usage: $0 FLEETD_SERVER_BINARY FLEETD_DEVSTACK_BINARY" >&2
  exit 2
fi
server_bin=$(realpath "$1")
devstack_bin=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

work=$(mktemp -d /tmp/fleetd-node-test.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  if ((rc != 0)); then
    for log in "$work"/*.log; do
      [[ -f $log ]] || continue
      echo "---- tail of $(basename "$log")" >&2
      tail -n 40 "$log" >&2
    done
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls command $1 until it succeeds, for at most $2 seconds.
wait_for() {
  local deadline=$((SECONDS + $2))
  until eval "$1" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "run.sh: timed out after $2 s waiting for: $1" >&2
      return 1
    fi
    sleep 0.1
  done
}

# A loopback port nothing listens on (the server fails loudly if it is taken meanwhile).
free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

if [[ ! -x node_modules/.bin/buf || ! -d node_modules/@connectrpc/connect-node ||
  ! -d node_modules/playwright-core ]]; then
  echo "run.sh: node packages missing: run 'npm ci' in $root" >&2
  exit 1
fi

echo "== buf generate (Connect-ES code into tests/node/gen)"
PATH=$root/node_modules/.bin:$PATH buf generate

echo "== backends (fleetd-devstack)"
setpriv --pdeathsig TERM "$devstack_bin" --env-file "$work/backends.env" 2>"$work/devstack.log" &
pids+=($!)
wait_for "test -s $work/backends.env" 180
# shellcheck disable=SC1091
source "$work/backends.env"
export FLEET_POSTGRES_DSN FLEET_VICTORIAMETRICS_URL FLEET_CLICKHOUSE_URL
export FLEET_ROUTE_METRICS=victoriametrics FLEET_ROUTE_LOGS=clickhouse FLEET_ROUTE_EVENTS=clickhouse
unset FLEET_LOKI_URL FLEET_TLS_CERT FLEET_TLS_KEY

echo "== migrate and device key"
"$server_bin" migrate 2>"$work/migrate.log"
device=node-device-$RANDOM
org=node-org
key=$("$server_bin" keys create --device "$device" --org "$org" 2>"$work/keys.log")
[[ -n $key ]] || { echo "run.sh: keys create printed no key" >&2; exit 1; }

grpc_port=$(free_port)
http_port=$(free_port)
admin_port=$(free_port)
door_port=$(free_port)
page_port=$(free_port) # the browser test's allowed page origin
echo "== fleetd-server serve (gRPC :$grpc_port, HTTP :$http_port, door :$door_port, admin :$admin_port, plaintext)"
FLEET_INSECURE=1 FLEET_GRPC_ADDR=127.0.0.1:$grpc_port FLEET_HTTP_ADDR=127.0.0.1:$http_port \
  FLEET_DOOR_ADDR=127.0.0.1:$door_port FLEET_DOOR_CORS_ORIGINS=http://127.0.0.1:$page_port \
  FLEET_ADMIN_ADDR=127.0.0.1:$admin_port setpriv --pdeathsig TERM "$server_bin" serve 2>"$work/server.log" &
pids+=($!)
wait_for "curl -fsS http://127.0.0.1:$admin_port/readyz" 60

echo "== node --test: the gRPC and HTTP addresses (both the front door)"
FLEETD_DOOR=1 FLEETD_HTTP_URL=http://127.0.0.1:$http_port FLEETD_GRPC_URL=http://127.0.0.1:$grpc_port \
  FLEETD_API_KEY=$key FLEETD_DEVICE_ID=$device FLEETD_ORG_ID=$org \
  node --test --test-reporter=spec tests/node/connect_client.test.mjs

echo "== node --test: every protocol through the front door's one port"
FLEETD_DOOR=1 FLEETD_HTTP_URL=http://127.0.0.1:$door_port FLEETD_GRPC_URL=http://127.0.0.1:$door_port \
  FLEETD_API_KEY=$key FLEETD_DEVICE_ID=$device FLEETD_ORG_ID=$org \
  node --test --test-reporter=spec tests/node/connect_client.test.mjs

echo "== node --test: Chromium calls the front door from another origin (CORS)"
FLEETD_DOOR_URL=http://127.0.0.1:$door_port FLEETD_PAGE_PORT=$page_port \
  FLEETD_API_KEY=$key FLEETD_DEVICE_ID=$device \
  node --test --test-reporter=spec tests/node/browser_cors.test.mjs

echo "== server counters after the run"
curl -fsS "http://127.0.0.1:$admin_port/metrics" | grep -E '^fleetd_rpc_frontend_requests_total' | head -20 || true
