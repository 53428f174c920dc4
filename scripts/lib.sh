# Shell helpers shared by the demo and the agent benchmark (source, don't run).

say() { printf '\n== %s\n' "$*"; }

# wait_for COMMAND SECONDS: polls COMMAND until it succeeds or SECONDS pass.
wait_for() {
  local deadline=$((SECONDS + $2))
  until eval "$1" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "timed out waiting for: $1" >&2
      return 1
    fi
    sleep 0.2
  done
}

# free_port: a loopback TCP port nothing listens on right now.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  echo "no free port" >&2
  return 1
}

# start_backends WORK_DIR BIN_DIR: runs fleetd-devstack (appending its pid to the
# caller's `pids` array) and exports the backends' addresses.
start_backends() {
  "$2/fleetd-devstack" --env-file "$1/backends.env" 2>"$1/devstack.log" &
  pids+=($!)
  wait_for "test -s $1/backends.env" 120 || { cat "$1/devstack.log"; return 1; }
  # shellcheck disable=SC1091
  source "$1/backends.env"
  export FLEET_POSTGRES_DSN FLEET_VICTORIAMETRICS_URL FLEET_CLICKHOUSE_URL
}

# stop_all: stops everything in `pids`, newest first.
stop_all() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
