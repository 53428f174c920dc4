# shellcheck shell=bash
# The conn-scale section of REPORT.md (sourced by bench/report.sh, which
# defines r and j over the results file).

# j with: errs ({"CODE": n} as "CODE n, ..." or "none") and mib (kB -> MiB).
cj() {
  j 'def errs: if . == null or . == {} then "none" else (to_entries | map("\(.key) \(.value)") | join(", ")) end;
     def mib: . / 1024 | r(0) | tostring + " MiB";
     def yes: if . then "met" else "**missed**" end;
     def th: tostring | gsub("(?<a>[0-9]{1,3})(?<b>[0-9]{3})(?![0-9])"; "\(.a),\(.b)"); '"$1"
}

conn_scale_section() {
  echo "## Connection scale: each device on its own TLS 1.3 connection (issue 12)"
  echo
  cj '.conn_scale | "Measured by `\(.command)` on \(.date) at commit \(.commit)" +
    (if (.uncommitted_files // 0) > 0 then " (fleetd-server built \(.server_built) with uncommitted changes to \(.uncommitted_files) files in the shared checkout)" else "" end) +
    ": \(.host), \(.cpus) CPUs shared by the server, its backends and the clients (load average after: \(.loadavg_after))."'
  echo
  cj '.conn_scale |
    "**\(.devices_note | th).** Each device holds its own TLS 1.3 connection (ALPN h2, a self-signed",
    "ECDSA P-256 certificate) to the front door (`FLEET_DOOR_ADDR`), \(.protocols | join(" and ")) by device",
    "(round robin), and sends one `SyncMetrics` batch of \(.samples_per_batch) samples every \(.period_s) s, phases spread",
    "evenly over the period; otherwise the connection is idle (no pings). The clients are independent:",
    "\(.client_processes) Node processes (`bench/conn_scale/client.mjs`), " +
    (if .client == "connect-es" then "on the official Connect-ES client (`@connectrpc/connect-node`, one `Http2SessionManager`, so one HTTP/2 session and one TLS socket, per device)."
     else "with unary gRPC and Connect written out on `node:http2` (one HTTP/2 session over its own TLS socket per device; messages by `@bufbuild/protobuf` from code generated from `proto/`): about half the CPU per call of the official Connect-ES client, which the scenario also runs with `BENCH_CONN_CLIENT=connect-es`." end),
    "First \(.handful.devices) devices connect and call once (the server *with a handful*), then the rest connect at",
    "\(.handshake_rate) handshakes/s (\(.ramp_s | r(0)) s); once every device is connected the fleet runs \(.hold_periods)",
    "periods, the steady window (\(.window_s) s): latency and the steady server figures come only from it.",
    "Latency is measured by the client from each call'"'"'s intended send time to its answer (\(.call_timeout_s) s deadline)."'
  echo
  cj '.conn_scale | .goal as $g |
    "**Goal (issue 12): 20,000 devices, every call succeeds, P99 < 250 ms, server threads do not grow with connections, RSS < 512 MiB: " +
    (if ($g | all(.[]; .)) then "met" else "missed: " + ([
      (if $g.devices then empty else "20,000 devices (\(.devices | th) here)" end),
      (if $g.every_call_ok then empty else "every call succeeds" end),
      (if $g.p99_under_250ms then empty else "P99 (\(.steady.p99_ms | r(0)) ms)" end),
      (if $g.threads_flat then empty else "threads (\(.server.threads.handful) with a handful, up to \(.server.threads.steady_max))" end),
      (if $g.rss_under_512mib then empty else "RSS (VmHWM \(.server.vm_hwm_kb | mib))" end)] | join("; ")) end) + ".**",
    "",
    "| | |",
    "|---|---|",
    "| devices, each on its own connection | \(.devices | th) of \(.requested_devices | th) requested: \(.goal.devices | yes) (fd limit, above) |",
    "| connections the server holds (`ss`, established) | \(.server.connections_established.steady_start | th) at the window'"'"'s start, \(.server.connections_established.steady_end | th) at its end |",
    "| calls in the steady window | \(.steady.calls | th) of \(.expected_steady_calls | th) due, errors: \(.steady.errors | errs) |",
    "| every call of the run (handful and ramp too) | \(.all_calls.calls | th), errors: \(.all_calls.errors | errs); every call succeeded: \(.goal.every_call_ok | yes) |",
    "| latency, steady window: P50 / P90 / **P99** / max | \(.steady.p50_ms | r(1)) / \(.steady.p90_ms | r(1)) / **\(.steady.p99_ms | r(1))** / \(.steady.max_ms | r(0)) ms: \(.goal.p99_under_250ms | yes) |",
    "| the server'"'"'s own view, steady window: P50 / P99 of `fleetd_rpc_duration_seconds` (handler core: decode, auth, delivery) | at most \(.server.latency_steady.p50_ms_at_most) / \(.server.latency_steady.p99_ms_at_most) ms (histogram bucket bounds; \(.server.latency_steady.calls | th) calls) |",
    (.steady.by_protocol | to_entries[] | "| … \(.key): P50 / P99 | \(.value.p50_ms | r(1)) / \(.value.p99_ms | r(1)) ms (\(.value.calls | th) calls, errors: \(.value.errors | errs)) |"),
    "| TLS handshakes (client side) | \(.connections.handshakes | th) completed (\(.connections.reconnections) reconnections), failed: \(.connections.handshake_failures | errs); connections lost: \(.connections.unexpected_closes), errors after the handshake: \(.connections.connection_errors | errs); slowest handshake \(.connections.handshake_max_ms | r(0)) ms |",
    "| server threads: at rest / with \(.handful.connections) connections / steady (min–max) / most during the run | \(.server.threads.rest) / \(.server.threads.handful) / \(.server.threads.steady_min)–\(.server.threads.steady_max) / \(.server.threads.run_max): \(.goal.threads_flat | yes) |",
    "| … the server'"'"'s threads by name at the end (digits dropped) | \(.server.threads.by_name_at_end | to_entries | map("`\(.key)` \(.value)") | join(", ")) |",
    "| server RSS: at rest / with the handful / steady (max) / VmHWM | \(.server.rss_kb.rest | mib) / \(.server.rss_kb.handful | mib) / \(.server.rss_kb.steady_max | mib) / **\(.server.vm_hwm_kb | mib)**: \(.goal.rss_under_512mib | yes) |",
    "| server memory per connection: (steady RSS − RSS with the handful) / added connections | \(.per_connection_rss_kb | r(1)) KiB |",
    "| server file descriptors: at rest / steady (max) / limit | \(.server.rest.fds) / \(.server.fds_steady_max | th) / \(.server_fd_limit.hard | th) |",
    "| clients: processes, RSS when all were connected, calls started > 100 ms late (whole run) | \(.client_processes), \(.clients.rss_kb_at_open | mib), \(.clients.late_starts | th) (worst \(.clients.max_timer_lag_ms | r(0)) ms) |",
    "| CPU-s in the steady window (\(.window_s) s × \(.cpus) CPUs; machine \(.machine_busy_steady * 100 | round) % busy) | server \(.cpu_s_steady.server), clients \(.cpu_s_steady.clients), PostgreSQL \(.cpu_s_steady.postgresql), VictoriaMetrics \(.cpu_s_steady.victoriametrics) |"'
  echo
  echo "Why the thread count stays flat: the front door runs every connection on a fixed pool of"
  echo "Asio I/O threads (one per CPU) and every handler call on a fixed pool of workers started"
  echo "with the server (\`door-*\`); a connection costs its socket, its TLS state and its HTTP/2"
  echo "session, no thread, so memory, not threads, grows with connections (per connection: the"
  echo "table; what it is made of: [server/rpc/README.md](../../server/rpc/README.md), *Memory per"
  echo "connection*)."
  echo "\`BENCH_CONN_PROTOCOLS=connect-h1\` runs the same fleet over HTTP/1.1 keep-alive instead."
  echo "*Server threads* and *RSS* are read from \`/proc/<pid>/status\` (Threads, VmRSS, VmHWM)"
  echo "every second of the run; *with a handful* is the same reading after the first devices' calls,"
  echo "so threads the server starts lazily (backend connections, writers) are already counted. The"
  echo "clients run on the same two CPUs as the server and its backends, over loopback, so the"
  echo "latencies include the clients' own TLS and HTTP/2 work and their scheduling delays (the CPU"
  echo "row says how the machine was shared); the server's own histogram shows its part."
  echo
}
