# shellcheck shell=bash
# shellcheck disable=SC2154 # bench/run sets bin, work, root, quick, the ports and pids
# The conn-scale scenario of bench/run (sourced by it; uses its helpers say,
# wait_for, free_port, start_server, stop_server and its variables bin, work,
# quick, server_pid, door_port).
#
# N simulated devices, each on its own long-lived TLS 1.3 connection to the
# server's front door (its gRPC address), mostly idle, each sending one
# SyncMetrics batch of 10 samples every period with phases spread uniformly.
# The clients are independent: Node processes (client.mjs) on the official
# Connect-ES client, a share of the devices each so none exceeds its
# file-descriptor limit, by default half gRPC and half Connect, both over
# HTTP/2 (ALPN h2).
#
# Steps: a self-signed ECDSA P-256 certificate (openssl), a fresh server with
# TLS, N device keys, then the clients: a handful of devices connect and call
# once (the server's thread count and RSS "with a handful"), the rest connect
# at a bounded handshake rate, and once every device is connected the fleet
# runs BENCH_CONN_HOLD_PERIODS periods: the steady window, the only part the
# latency figures and the steady-state server figures come from. The server
# is sampled from /proc/<pid>/status (Threads, VmRSS, VmHWM) and /proc/<pid>/fd
# the whole time; its established connections are counted by `ss`.
#
# N: BENCH_CONN_DEVICES, else (full run) 20,000 capped by the server's
# file-descriptor limit: the harness raises the soft limit to the hard one,
# and N is the hard limit minus what the server holds at rest minus
# BENCH_CONN_FD_HEADROOM (250: backend connections, logs, the handful).
#
# Knobs: BENCH_CONN_DEVICES, BENCH_CONN_PERIOD (30s; quick 2s),
# BENCH_CONN_HOLD_PERIODS (2), BENCH_CONN_RATE (handshakes/s over all
# clients: 300; quick 200), BENCH_CONN_CLIENTS (client processes: one per
# 5,000 devices, at least 2), BENCH_CONN_PROTOCOLS ("grpc connect"; also
# connect-h1: Connect over HTTP/1.1 keep-alive), BENCH_CONN_CLIENT (raw:
# unary gRPC and Connect by hand on node:http2, about half the CPU per call of
# connect-es: the official Connect-ES client), BENCH_CONN_WARM (devices per
# client in the handful: 2), BENCH_CONN_TIMEOUT (call deadline: 10s),
# BENCH_CONN_FD_HEADROOM (250), BENCH_CONN_NODE_FLAGS (extra node flags for the
# clients, e.g. --cpu-prof).

conn_requested=20000

# "threads rss_kb hwm_kb fds" of process $1 now ("threads rss_kb hwm_kb"
# with a second argument).
conn_proc_figures() {
  local figures
  figures=$(awk '/^Threads:/ {t = $2} /^VmRSS:/ {r = $2} /^VmHWM:/ {h = $2} END {print t, r, h}' \
    "/proc/$1/status")
  if (($# > 1)); then
    echo "$figures"
  else
    echo "$figures $(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l)"
  fi
}
# The SyncMetrics buckets of the server's fleetd_rpc_duration_seconds
# histogram (time in the handler core: decode, auth, delivery to the
# backends) as "le count" lines.
conn_server_histogram() {
  curl -fsS "http://127.0.0.1:$admin_port/metrics" |
    sed -n 's/^fleetd_rpc_duration_seconds_bucket{method="SyncMetrics",le="\([^"]*\)"} \(.*\)$/\1 \2/p'
}
# Established TCP connections on the server's side of port $1.
conn_established() { ss -Htn state established "( sport = :$1 )" | wc -l; }
# Seconds as a plain number: "30s" -> 30, "500ms" -> 0.5, "2" -> 2.
conn_seconds() {
  case $1 in
  *ms) awk -v v="${1%ms}" 'BEGIN {print v / 1000}' ;;
  *s) echo "${1%s}" ;;
  *) echo "$1" ;;
  esac
}
now_ms() { date +%s%3N; }

conn_client_pids=()
conn_sampler_pid=
conn_scale_cleanup() {
  local p
  for p in "${conn_client_pids[@]}" $conn_sampler_pid; do
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  conn_client_pids=()
  conn_sampler_pid=
}

# conn_scale OUT_JSON: runs the scenario and writes its figures.
conn_scale() {
  local out_json=$1 dir=$work/conn-scale
  local period_s hold_periods rate clients protocols warm timeout_s headroom client
  period_s=$(conn_seconds "${BENCH_CONN_PERIOD:-$( ((quick)) && echo 2s || echo 30s)}")
  hold_periods=${BENCH_CONN_HOLD_PERIODS:-2}
  rate=${BENCH_CONN_RATE:-$( ((quick)) && echo 200 || echo 300)}
  protocols=${BENCH_CONN_PROTOCOLS:-grpc connect}
  client=${BENCH_CONN_CLIENT:-raw}
  warm=${BENCH_CONN_WARM:-2}
  timeout_s=$(conn_seconds "${BENCH_CONN_TIMEOUT:-10s}")
  headroom=${BENCH_CONN_FD_HEADROOM:-250}
  local period_ms timeout_ms
  period_ms=$(awk -v s="$period_s" 'BEGIN {printf "%d\n", s * 1000}')
  timeout_ms=$(awk -v s="$timeout_s" 'BEGIN {printf "%d\n", s * 1000}')
  mkdir -p "$dir"

  # TLS 1.3 needs nothing special in the certificate; ECDSA keeps the
  # handshakes cheap on both sides.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>"$dir/openssl.log" ||
    { cat "$dir/openssl.log" >&2; return 1; }
  PATH=$root/node_modules/.bin:$PATH buf generate --template bench/conn_scale/buf.gen.yaml ||
    { echo "bench: buf generate failed (run 'npm ci' first)" >&2; return 1; }

  say "conn-scale: fleetd-server with TLS 1.3, front door :$door_port"
  start_server FLEET_INSECURE=0 FLEET_TLS_CERT="$dir/cert.pem" FLEET_TLS_KEY="$dir/key.pem"
  local server_fd_soft server_fd_hard rest
  read -r server_fd_soft server_fd_hard < <(awk '/^Max open files/ {print $4, $5}' "/proc/$server_pid/limits")
  rest=$(conn_proc_figures "$server_pid")
  local fds_rest=${rest##* } n n_note
  if [[ -n ${BENCH_CONN_DEVICES:-} ]]; then
    n=$BENCH_CONN_DEVICES
    n_note="BENCH_CONN_DEVICES=$n"
  elif ((quick)); then
    n=60
    n_note="quick run: $n devices"
  else
    n=$((server_fd_hard - fds_rest - headroom))
    ((n > conn_requested)) && n=$conn_requested
    n_note="$conn_requested requested; this machine's hard fd limit is $server_fd_hard (the server holds $fds_rest at rest, $headroom kept free for backend connections and the rest), so N = $n"
  fi
  echo "bench: conn-scale: $n_note" >&2
  clients=${BENCH_CONN_CLIENTS:-$(((n + 4999) / 5000))}
  ((clients < 2)) && clients=2
  ((clients > n)) && clients=$n
  local per_client=$(((n + clients - 1) / clients))
  if ((per_client + 200 > $(ulimit -n))); then
    echo "bench: conn-scale: $per_client devices per client exceed the fd limit $(ulimit -n); raise BENCH_CONN_CLIENTS" >&2
    return 1
  fi

  "$bin/fleetd-server" keys create --count "$n" --prefix conn --org bench --csv \
    >"$dir/keys.csv" 2>"$dir/keys.log" || { cat "$dir/keys.log" >&2; return 1; }

  # The server, sampled from now until the clients have stopped: threads and
  # RSS every interval, descriptors (a directory of up to 20,000 entries to
  # list) every fifth.
  local interval=1
  ((quick)) && interval=0.2
  (i=0
  while [[ -d /proc/$server_pid ]]; do
    if ((i++ % 5 == 0)); then
      figures=$(conn_proc_figures "$server_pid")
    else
      figures="$(conn_proc_figures "$server_pid" nofds) ${figures##* }"
    fi
    echo "$(now_ms) $figures"
    sleep "$interval"
  done) >"$dir/server.samples" 2>/dev/null &
  conn_sampler_pid=$!

  say "conn-scale: $n devices over $clients client processes ($protocols), period ${period_s}s, $rate handshakes/s"
  local i first count
  for ((i = 0; i < clients; i++)); do
    first=$((i * n / clients))
    count=$(((i + 1) * n / clients - first))
    # shellcheck disable=SC2086 # flags, one per word
    node ${BENCH_CONN_NODE_FLAGS:-} bench/conn_scale/client.mjs --url "https://127.0.0.1:$door_port" --ca "$dir/cert.pem" \
      --keys "$dir/keys.csv" --first "$first" --count "$count" \
      --protocols "${protocols// /,}" --client "$client" --period-ms "$period_ms" \
      --rate "$(awk -v r="$rate" -v c="$clients" 'BEGIN {print r / c}')" --warm "$warm" \
      --timeout-ms "$timeout_ms" --status "$dir/status.$i" --records "$dir/records.$i" \
      --summary "$dir/summary.$i.json" 2>"$dir/client.$i.log" &
    conn_client_pids+=($!)
  done
  # Waits until every client has appended a line starting with $1 to its
  # status file, at most $2 seconds; fails at once when a client exited.
  conn_wait_status() {
    local deadline=$((SECONDS + $2)) p
    until (($(cat "$dir"/status.* 2>/dev/null | grep -c "^$1 " || true) >= clients)); do
      for p in "${conn_client_pids[@]}"; do
        if ! kill -0 "$p" 2>/dev/null; then
          echo "bench: conn-scale: a client exited early:" >&2
          tail -5 "$dir"/client.*.log >&2
          return 1
        fi
      done
      if ((SECONDS >= deadline)); then
        echo "bench: conn-scale: timed out waiting for '$1' from every client" >&2
        return 1
      fi
      sleep 0.2
    done
  }
  conn_wait_status warm 120 || return 1
  local handful handful_conns
  handful=$(conn_proc_figures "$server_pid")
  handful_conns=$(conn_established "$door_port")
  local warm_failed
  warm_failed=$(cat "$dir"/status.* | awk '$1 == "warm" {s += $4} END {print s + 0}')

  say "conn-scale: the handful connected ($handful_conns connections, server threads ${handful%% *}); opening the rest"
  local ramp_ms ts te
  ramp_ms=$(now_ms)
  kill -USR1 "${conn_client_pids[@]}"
  conn_wait_status open "$((n / rate * 3 + 60))" || return 1
  ts=$(now_ms)
  # CPU ticks (bench/run's ticks_of) of the server, the clients and the
  # backends over the steady window, and of the whole machine (/proc/stat).
  conn_cpu_mark() {
    # shellcheck disable=SC2046 # one pid per word
    echo "$(ticks_of "$server_pid") $(ticks_of "${conn_client_pids[@]}") $(ticks_of "$vm_pid") $(ticks_of $(pg_pids))" \
      "$(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)"
  }
  local cpu_start cpu_end
  cpu_start=$(conn_cpu_mark)
  conn_server_histogram >"$dir/histogram.start"
  local conns_start steady_start_figures
  conns_start=$(conn_established "$door_port")
  steady_start_figures=$(conn_proc_figures "$server_pid")
  echo "bench: conn-scale: $conns_start connections in $(((ts - ramp_ms) / 1000)) s; holding for $hold_periods periods" >&2
  te=$((ts + hold_periods * period_ms))
  # The load runs on the clients' own schedule meanwhile.
  sleep "$(awk -v ms="$((te - $(now_ms)))" 'BEGIN {print (ms > 0 ? ms : 0) / 1000}')"
  local conns_end end_figures
  cpu_end=$(conn_cpu_mark)
  conn_server_histogram >"$dir/histogram.end"
  conns_end=$(conn_established "$door_port")
  end_figures=$(conn_proc_figures "$server_pid")
  # The server's threads by name (digits dropped: "door-worker-17" counts as
  # "door-worker-"), to say what the fixed pool is made of.
  local thread_names
  thread_names=$(cat "/proc/$server_pid"/task/*/comm 2>/dev/null | sed 's/[0-9]*$//' | sort | uniq -c |
    jq -R 'capture("^ *(?<n>[0-9]+) (?<name>.*)$") | {(.name): (.n | tonumber)}' |
    jq -s 'add // {} | to_entries | sort_by(-.value) | from_entries')
  # Calls meant to start just before the window's end get a second to start
  # (timers run late under load), then the clients stop.
  sleep 1
  local p
  for p in "${conn_client_pids[@]}"; do kill -TERM "$p"; done
  local failed=0
  for p in "${conn_client_pids[@]}"; do wait "$p" || failed=1; done
  conn_client_pids=()
  kill -TERM "$conn_sampler_pid" 2>/dev/null || true
  wait "$conn_sampler_pid" 2>/dev/null || true
  conn_sampler_pid=
  if ((failed)); then
    echo "bench: a conn-scale client failed:" >&2
    tail -5 "$dir"/client.*.log >&2
    return 1
  fi

  local clients_json
  local summarize_args=(--from "$ts" --to "$te")
  for ((i = 0; i < clients; i++)); do
    summarize_args+=(--records "$dir/records.$i" --summary "$dir/summary.$i.json")
  done
  clients_json=$(node bench/conn_scale/summarize.mjs "${summarize_args[@]}")
  stop_server

  # Server figures: "threads rss hwm fds" strings into JSON.
  fig() { awk '{printf "{\"threads\": %d, \"rss_kb\": %d, \"hwm_kb\": %d, \"fds\": %d}\n", $1, $2, $3, $4}' <<<"$1"; }
  local steady_json
  steady_json=$(awk -v a="$ts" -v b="$te" '
    {if ($2 > run_max) run_max = $2}
    $1 >= a && $1 <= b {n++; if ($2 > tmax) tmax = $2; if (tmin == "" || $2 < tmin) tmin = $2
      if ($3 > rmax) rmax = $3; if ($5 > fmax) fmax = $5}
    END {printf "{\"samples\": %d, \"threads_max\": %d, \"threads_min\": %d, \"rss_kb_max\": %d, \"fds_max\": %d, \"run_threads_max\": %d}\n",
      n, tmax, tmin + 0, rmax, fmax, run_max}' "$dir/server.samples")

  jq -n --argjson requested "$conn_requested" --argjson n "$n" --arg note "$n_note" \
    --argjson fd_soft "$server_fd_soft" --argjson fd_hard "$server_fd_hard" \
    --argjson headroom "$headroom" --argjson period "$period_s" --argjson hold "$hold_periods" \
    --argjson rate "$rate" --argjson procs "$clients" --arg protocols "$protocols" \
    --argjson warm "$warm" --argjson timeout "$timeout_s" --argjson warm_failed "$warm_failed" \
    --argjson ramp_s "$(awk -v a="$ramp_ms" -v b="$ts" 'BEGIN {print (b - a) / 1000}')" \
    --argjson rest "$(fig "$rest")" --argjson handful "$(fig "$handful")" \
    --argjson handful_conns "$handful_conns" --argjson startf "$(fig "$steady_start_figures")" \
    --argjson endf "$(fig "$end_figures")" --argjson steady "$steady_json" \
    --argjson conns_start "$conns_start" --argjson conns_end "$conns_end" \
    --argjson clients "$clients_json" --argjson thread_names "$thread_names" --arg client "$client" \
    --argjson server_latency "$(paste -d' ' "$dir/histogram.start" "$dir/histogram.end" | awk '
      {le[NR] = $1; c[NR] = $4 - $2} END {
        n = c[NR]; p50 = "null"; p99 = "null"
        for (i = 1; i <= NR; i++) {
          ms = (le[i] == "+Inf") ? "null" : le[i] * 1000
          if (p50 == "null" && n > 0 && c[i] >= 0.5 * n) p50 = ms
          if (p99 == "null" && n > 0 && c[i] >= 0.99 * n) p99 = ms
        }
        printf "{\"calls\": %d, \"p50_ms_at_most\": %s, \"p99_ms_at_most\": %s}\n", n, p50, p99}')" \
    --argjson cpu "$(echo "$cpu_start $cpu_end" | awk -v hz="$clk_tck" '{
      printf "{\"server\": %.2f, \"clients\": %.2f, \"victoriametrics\": %.2f, \"postgresql\": %.2f, \"machine_busy\": %.3f}\n",
        ($7 - $1) / hz, ($8 - $2) / hz, ($9 - $3) / hz, ($10 - $4) / hz, ($11 - $5) / (($11 - $5) + ($12 - $6))}')" \
    --arg date "$(date -u +%FT%TZ)" --arg commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --arg host "$(uname -srm)" --argjson cpus "$(nproc)" \
    --arg command "$(env | grep '^BENCH_' | sort | tr '\n' ' ')bench/run" \
    --arg built "$(date -u -r "$bin/fleetd-server" +%FT%TZ)" \
    --argjson uncommitted "$(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)" \
    '{date: $date, commit: $commit, uncommitted_files: $uncommitted, server_built: $built, host: $host, cpus: $cpus, command: $command, loadavg_after: $load,
      requested_devices: $requested, devices: $n, devices_note: $note,
      server_fd_limit: {soft: $fd_soft, hard: $fd_hard}, fd_headroom: $headroom,
      period_s: $period, hold_periods: $hold, window_s: ($period * $hold), samples_per_batch: 10,
      handshake_rate: $rate, client_processes: $procs, client: $client,
      protocols: ($protocols | split(" ")),
      call_timeout_s: $timeout, ramp_s: $ramp_s,
      cpu_s_steady: ($cpu | del(.machine_busy)), machine_busy_steady: $cpu.machine_busy,
      handful: {devices: ($warm * $procs), warm_calls_failed: $warm_failed, connections: $handful_conns},
      server: {
        rest: $rest, handful: $handful, steady_start: $startf, steady_end: $endf,
        threads: {rest: $rest.threads, handful: $handful.threads, steady_max: $steady.threads_max,
                  steady_min: $steady.threads_min, run_max: $steady.run_threads_max,
                  by_name_at_end: $thread_names},
        rss_kb: {rest: $rest.rss_kb, handful: $handful.rss_kb, steady_max: $steady.rss_kb_max,
                 steady_end: $endf.rss_kb},
        latency_steady: $server_latency, vm_hwm_kb: $endf.hwm_kb, fds_steady_max: $steady.fds_max, samples_in_window: $steady.samples,
        connections_established: {steady_start: $conns_start, steady_end: $conns_end}},
      per_connection_rss_kb: (if $n > ($warm * $procs)
        then ($steady.rss_kb_max - $handful.rss_kb) / ($n - $warm * $procs) else null end)}
     + $clients
     | .expected_steady_calls = (.devices * .hold_periods)
     | .goal = {
         devices: (.devices >= .requested_devices),
         every_call_ok: (.all_calls.errors == {} and .steady.calls == .expected_steady_calls
                         and .connections.unexpected_closes == 0 and .clients.calls_unfinished == 0),
         p99_under_250ms: (.steady.p99_ms != null and .steady.p99_ms < 250),
         threads_flat: (.server.threads.steady_max == .server.threads.handful),
         rss_under_512mib: (.server.vm_hwm_kb < 512 * 1024)}' >"$out_json"
  jq -c '{devices, steady: (.steady | {calls, errors, p50_ms, p99_ms}), threads: .server.threads,
          rss_kb: .server.rss_kb, hwm: .server.vm_hwm_kb, connections: .connections.handshakes, goal}' \
    "$out_json" >&2
}
