#!/usr/bin/env bash
# Renders bench/run's results.json as REPORT.md and throughput.png (gnuplot).
#   bench/report.sh RESULTS_JSON OUT_DIR
set -euo pipefail
results=$1
out=$2
r() { jq -r "$1" "$results"; }
# r(n): n decimals; k: 1234567 -> 1234.6k; m: 9760000 -> 9.76 M; pct: 0.1234 -> 12 %.
fmt='def r(n): (. * pow(10; n) | round) / pow(10; n);
def k: if . >= 1000 then (. / 1000 | r(1) | tostring) + "k" else (r(1) | tostring) end;
def m: if . >= 1000000 then (. / 1000000 | r(2) | tostring) + " M" else k end;
def cpu: if . == null then "–" else r(2) | tostring end;
def pct: . * 100 | round | tostring + " %";
def per($b): if . == null or $b == null or $b == 0 then null else . / $b end;
def x(n): if . == null then "–" else r(n) | tostring end;'
j() { jq -r "$fmt $1" "$results"; }

intro() {
  echo "# FleetD Sync load test"
  echo
  if [[ $(r .quick) == true ]]; then
    echo "**Quick run (BENCH_QUICK=1): tiny parameters, figures mean nothing.**"
    echo
  fi
}

# Everything but conn-scale (BENCH_SCENARIOS' "ingest").
ingest_sections() {
  echo "Measured by \`BENCH_BUILD_DIR=build bench/run\` on $(r .date) at commit $(r .commit)$(j 'if (.uncommitted_files // 0) > 0 then " (built with uncommitted changes to \(.uncommitted_files) files in the shared checkout)" else "" end'): $(r .host),"
  echo "$(r .cpus) CPUs shared with other engineers' builds (load average before $(r .loadavg_before), after"
  echo "$(r .loadavg_after)). The load generator, the server and all backends (PostgreSQL,"
  echo "VictoriaMetrics, ClickHouse for logs) ran on the same machine, so every figure is a floor"
  echo "for what the server does with CPUs of its own. Plaintext, loopback. $(r .keys.count) device keys"
  echo "provisioned in $(r '.keys.provision_s | . * 10 | round / 10') s."
  echo

  echo "## fleetd-server against vmagent and VictoriaMetrics' own import, same samples"
  echo
  echo "Every run below moves the same $(j '.ceiling.samples | m') samples: $(r .backlog.devices) devices of the tier"
  echo "mix, $(r .backlog.batches) batches each. fleetd-server gets them as a *burst*: after an outage each"
  echo "device drains its backlog as fast as the server allows (the server's best case), over gRPC"
  echo "(the batches are built, compressed and checksummed before the clock starts, as a device's"
  echo "backlog sits ready in its store, and as the baselines' bodies are files made beforehand;"
  echo "one connection per sender thread, as the device-shaped vmagent gets them)"
  echo "and, with a fresh server, over Connect, both answered by the front door (server/rpc/door, the"
  echo "server's front end on every address). The baselines get the same batches as"
  echo "VictoriaMetrics JSON lines (\`fleetd-loadgen --export-vm-jsonl\`, with the device_id/org_id"
  echo "labels the server adds), sent by $(r .ceiling.posters) concurrent \`curl\`s in ~4 MB bodies: the *ceiling* straight into"
  echo "VictoriaMetrics' \`/api/v1/import\`, the *peer* into vmagent's, which remote-writes to"
  echo "VictoriaMetrics. The two vmagent baselines differ only in how vmagent is fed. The *peer*"
  echo "gets the JSON lines in $(j '.vmagent.requests // "–" | tostring') large uncompressed requests, which spares it the"
  echo "per-request work the server pays once per device batch. The *device-shaped peer*, a fresh vmagent,"
  echo "gets one Prometheus remote-write request per device batch, as devices running a remote-write"
  echo "agent would send them: $(j '.vmagent_device_shaped.requests | tostring') snappy-compressed protobuf bodies (encoded by the server's"
  echo "\`RemoteWriteEncoder\`, \`fleetd-loadgen --export-remote-write\`) posted to its \`/api/v1/write\`"
  echo "by \`curl --parallel\` with the burst's concurrency over $(j '.vmagent_device_shaped.connections | tostring') keep-alive connections."
  echo "CPU-s: user + system time of each process over the run's window, from \`/proc/<pid>/stat\`"
  echo "(the posters' is not counted)."
  echo
  echo "| run | process | samples/s | CPU-s | CPU-s per M samples | peak RSS |"
  echo "|---|---|---:|---:|---:|---:|"
  j '.bursts[] |
    "| fleetd-server, \(.transport) burst: \(.samples_acked | m) samples in \(.window_s | r(1)) s | server | \(.samples_per_second | k) | \(.cpu_s.server | cpu) | **\(.cpu_s_per_m_samples.server | cpu)** | \(.server_peak_rss_kb / 1024 | round) MiB |",
    "| | VictoriaMetrics behind it | | \(.cpu_s.victoriametrics | cpu) | \(.cpu_s_per_m_samples.victoriametrics | cpu) | |",
    "| | PostgreSQL behind it | | \(.cpu_s.postgresql | cpu) | \(.cpu_s_per_m_samples.postgresql | cpu) | |"'
  j '.ceiling | "| ceiling: VictoriaMetrics /api/v1/import, \(.samples | m) samples in \(.seconds | r(1)) s | VictoriaMetrics | \(.samples_per_second | k) | \(.cpu_s.victoriametrics | cpu) | \(.cpu_s_per_m_samples.victoriametrics | cpu) | |"'
  j '.vmagent |
    "| peer: vmagent → remote write → VictoriaMetrics, \(.rows_sent | m) samples in \(.seconds | r(1)) s | vmagent | \(.samples_per_second | k) | \(.cpu_s.vmagent | cpu) | **\(.cpu_s_per_m_samples.vmagent | cpu)** | \(.peak_rss_kb / 1024 | round) MiB |",
    "| | VictoriaMetrics behind it | | \(.cpu_s.victoriametrics | cpu) | \(.cpu_s_per_m_samples.victoriametrics | cpu) | |"'
  j '.vmagent_device_shaped |
    "| device-shaped peer: vmagent fed \(.requests | m) remote-write requests (one per device batch) → VictoriaMetrics, \(.rows_sent | m) samples in \(.seconds | r(1)) s | vmagent | \(.samples_per_second | k) | \(.cpu_s.vmagent | cpu) | **\(.cpu_s_per_m_samples.vmagent | cpu)** | \(.peak_rss_kb / 1024 | round) MiB |",
    "| | VictoriaMetrics behind it | | \(.cpu_s.victoriametrics | cpu) | \(.cpu_s_per_m_samples.victoriametrics | cpu) | |"'
  echo
  if [[ $(r '.goal != null') == true ]]; then
    j '.goal as $g | (.bursts | map(select(.transport == "grpc")) | first) as $b | .vmagent as $v |
      "**Goal (issue 11): ours ≥ vmagent samples/s and ≤ vmagent CPU per M samples: " +
      (if $g.throughput_met and $g.cpu_met then "met" else "missed" end) + ".**",
      "",
      "- samples/s: fleetd-server (gRPC burst) \($b.samples_per_second | k) / vmagent \($v.samples_per_second | k) = \($g.samples_per_second_ratio | r(2)): " +
      (if $g.throughput_met then "**met**" else "**missed by \(1 - $g.samples_per_second_ratio | pct)** (ours would need \(1 / $g.samples_per_second_ratio | r(1))× its rate)" end) + ";",
      "- CPU-s per M samples: fleetd-server \($b.cpu_s_per_m_samples.server | cpu) / vmagent \($v.cpu_s_per_m_samples.vmagent | cpu) = \($g.cpu_per_m_samples_ratio | x(2)): " +
      (if $g.cpu_met then "**met**" else "**missed by \($g.cpu_per_m_samples_ratio | x(1))×** (ours spends \($g.cpu_per_m_samples_ratio | x(1)) times vmagent'"'"'s CPU per sample)" end) + ";",
      "- with PostgreSQL behind it counted as ours (vmagent has no ledger): \(($b.cpu_s_per_m_samples.server + $b.cpu_s_per_m_samples.postgresql) | cpu) CPU-s per M samples, \(($b.cpu_s_per_m_samples.server + $b.cpu_s_per_m_samples.postgresql) | per($v.cpu_s_per_m_samples.vmagent) | x(1))× vmagent'"'"'s."'
    j '.goal.device_shaped as $g | .vmagent_device_shaped as $v | if $g == null then empty else
      "- against the device-shaped peer (one request per device batch, as ours gets them): samples/s \($g.samples_per_second_ratio | r(2))× vmagent'"'"'s \($v.samples_per_second | k) (" +
      (if $g.throughput_met then "met" else "missed by \(1 - $g.samples_per_second_ratio | pct)" end) +
      "), CPU-s per M samples \($g.cpu_per_m_samples_ratio | x(2))× vmagent'"'"'s \($v.cpu_s_per_m_samples.vmagent | cpu) (" +
      (if $g.cpu_met then "met" else "missed by \($g.cpu_per_m_samples_ratio | x(1))×" end) + ")." end'
    j '(.bursts | map(select(.transport == "connect")) | first) as $c | .vmagent as $v |
      if $c == null then empty else
      "- over Connect: \($c.samples_per_second | k) samples/s (\($c.samples_per_second / $v.samples_per_second | r(2))× vmagent), \($c.cpu_s_per_m_samples.server | cpu) CPU-s per M samples (\($c.cpu_s_per_m_samples.server | per($v.cpu_s_per_m_samples.vmagent) | x(1))× vmagent'"'"'s)." end'
    echo
  fi
  echo "Server throughput, best of all runs / ceiling: **$(r '.ceiling_ratio * 100 | round') %**."
  echo
  echo "What is left ([profile](profile.md)): per sample, the server does work the device-shaped"
  echo "vmagent run is spared by its input, before it does what vmagent does (encode remote write,"
  echo "snappy, send): the wire's SHA-256 checksum over every uncompressed batch, zstd or gzip"
  echo "in-message compression, and a label map on every sample where remote write sends each series'"
  echo "labels once; plus HTTP/2 framing per device batch (the gRPC run) and the ledger's check and"
  echo "record per batch. \`build/bin/decode_benchmark --benchmark_filter=DecodeMetricsWire\` measures"
  echo "the decoding share per tier alone."
  echo

  echo "## Throughput and latency by fleet size (open loop, $(r .transport))"
  echo
  echo "Each device sends its tier's batch (20 % tier 1: 1000 samples zstd, 40 % tier 2: 100"
  echo "gzip, 40 % tier 3: 10 uncompressed) on a fixed schedule for the offered rate, plus a logs"
  echo "batch (5 % as many entries as samples). Latency runs from each batch's *intended* send time"
  echo "(no coordinated omission)."
  echo
  echo "| devices | active | offered samples/s | acked samples/s | logs/s | batches/s | P50 ms | P95 ms | P99 ms | max ms | errors |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  j '.scale[] | "| \(.devices) | \(.active_devices) | \(.target_rate|k) | \(.samples_per_second|k) | \(.logs_per_second|r(0)) | \(.batches_per_second|r(0)) | \(.p50_ms|r(1)) | \(.p95_ms|r(1)) | \(.p99_ms|r(1)) | \(.max_ms|r(0)) | \(.errors|tostring) |"'
  echo
  echo "(*active*: devices that sent at least once in the window; at 10,000 devices the per-device"
  echo "interval is longer than the run, so only part of the fleet is due.)"
  echo

  echo "## Overload, bursts after an outage"
  echo
  echo "| scenario | devices | acked samples/s | P50 ms | P99 ms | errors | unsent | server peak RSS |"
  echo "|---|---:|---:|---:|---:|---|---:|---:|"
  j '.overload // empty | "| overload (\(.transport), offered \(.target_rate|k) samples/s, 256 in flight, server FLEET_MAX_QUEUE_BYTES=\(.server_max_queue_bytes)) | \(.devices) | \(.samples_per_second|k) | \(.p50_ms|r(1)) | \(.p99_ms|r(1)) | \(.errors|tostring) | \(.unsent) | \(.server_peak_rss_kb/1024|r(0)) MiB |"'
  j '.bursts[] | "| burst over \(.transport): \(.devices) devices drain \(.samples_acked | m) samples, drained=\(.drained) in \(.drain_s|r(1)) s | \(.devices) | \(.samples_per_second|k) | \(.p50_ms|r(1)) | \(.p99_ms|r(1)) | \(.errors|tostring) | \(.unsent) | \(.server_peak_rss_kb/1024|r(0)) MiB |"'
  echo
  if [[ $(r '.overload != null') == true ]]; then
    echo "Server RSS right after the overload run: $(r '.overload.server_rss_after_kb / 1024 | round') MiB;"
    echo "peak over the scale runs: $(r '.server_peak_rss_kb_scale / 1024 | round') MiB."
    echo
  fi

  echo "## Wire bytes per sample"
  echo
  echo "| | bytes per sample |"
  echo "|---|---:|"
  j '"| fleetd-server: device → server, metrics requests of the scale runs | \(.bytes_per_sample_ours|r(1)) |"'
  j '"| devices → vmagent (device-shaped peer), one remote-write body per device batch | \(.vmagent_device_shaped.request_bytes_per_sample|r(1)) |"'
  j '"| vmagent → VictoriaMetrics, remote-write bodies | \(.vmagent.bytes_per_sample|r(1)) |"'
  j '"| vmagent → VictoriaMetrics (device-shaped peer), remote-write bodies | \(.vmagent_device_shaped.bytes_per_sample|r(1)) |"'
  echo
  echo "Ours counts each metrics request as the transport sends it (protobuf, in-message zstd/gzip"
  echo "per tier, 5-byte gRPC frame); vmagent's is \`vmagent_remotewrite_bytes_sent_total\` over the"
  echo "samples it sent (\`vmagent_remotewrite_rows_pushed_after_relabel_total\`; $(r .vmagent.blocks_sent) blocks):"
  echo "snappy-compressed Prometheus remote-write blocks, each packing the samples of many devices,"
  echo "where a device's batch carries only its own (10 to 1000 samples)."
  echo

  echo "## Where the server's CPU goes"
  echo
  if [[ $(r .profile.recorded) == true ]]; then
    echo "A whole-machine CPU profile of the gRPC burst ($(r .profile.samples) samples at $(r .profile.frequency_hz) Hz"
    echo "per CPU): fleetd-server took $(j '.profile.server_share | pct') of the machine. Its top symbols"
    echo "(self time, share of the server's samples):"
    echo
    j '.profile.server_top_symbols[:8][] | "- \(.server_share * 100 | r(1)) % `\(.symbol | if length > 110 then .[:107] + "..." else . end)` (\(.dso))"'
    echo
    echo "The whole summary, by process and the top symbols: [profile.md](profile.md)."
  else
    echo "No profile this run: $(r .profile.note)."
  fi
  echo

  echo "## Notes"
  echo
  echo "- The CPU window of each run starts just before the first request and ends after the last"
  echo "  acknowledgement (the load generator exited; for the baselines: VictoriaMetrics flushed, or"
  echo "  vmagent had nothing left to send), then VictoriaMetrics' \`/internal/force_flush\` and a"
  echo "  short settle, so work deferred past the acknowledgements (VictoriaMetrics turning buffered"
  echo "  rows into parts, coalesced ledger writes) is counted. Each process's CPU is utime + stime of"
  echo "  all its threads, live or exited, plus its reaped children's (PostgreSQL's backends)."
  echo "- Samples/s: the bursts count acknowledged samples from the first send to the last"
  echo "  acknowledgement; the baselines count wall time from the first POST until VictoriaMetrics"
  echo "  was flushed (ceiling) or vmagent had nothing left to send (both peers). VictoriaMetrics ingests"
  echo "  asynchronously in every case, including behind fleetd-server."
  echo "- The load generator shares the 2 CPUs with the server during the bursts (it builds,"
  echo "  compresses and checksums every batch); the baselines' posters are \`curl\` sending"
  echo "  prepared files. CPU used by the load generator:"
  echo "  $(j '[.scale[], (.overload // empty), .bursts[]] | map("\(.transport) \(.devices) devices \(.client_cpu_s | r(1)) s") | join(", ")')"
  echo "  (in that order: the scale runs, overload, the bursts)."
  if [[ $(r .profile.recorded) == true ]]; then
    echo "- The gRPC burst ran under \`perf record\` ($(r .profile.frequency_hz) Hz per CPU, whole machine), whose"
    echo "  sampling costs the profiled processes a little; the Connect burst and the baselines ran without it."
  fi
  echo "- In a burst a call that fails with a retryable error (e.g. DEADLINE_EXCEEDED after the 10 s"
  echo "  call deadline) is retried by its device after the server's hint, as the agent does"
  echo "  (*errors* counts the failed calls); *drained* says every batch was acknowledged in the end."
  echo "- Open loop: each device's batches go out on a fixed schedule (random phase per device),"
  echo "  so offered samples vary a little around the target when few large tier-1 batches are"
  echo "  due. In the overload run the offered rate is far above capacity, and its latencies are"
  echo "  mostly time spent queued in the load generator behind the 256 calls in flight: that is"
  echo "  counted on purpose (latency from the intended send time); *unsent* are batches still"
  echo "  queued when the run plus a 5 s grace ended."
  echo "- Overload: with the default 256 MiB backend queues 256 calls in flight never fill a queue"
  echo "  (the clients' calls in flight bound the server's memory), so the server is restarted with"
  echo "  a small queue to exercise the bound: it answers RESOURCE_EXHAUSTED and RSS stays bounded"
  echo "  (figures above). The bursts ran against restarted servers with default settings, the first"
  echo "  after a 5 s outage."
  echo
}

# shellcheck source=bench/conn_scale/report.sh
source "$(dirname "$0")/conn_scale/report.sh"

ingest=$(r 'has("scale")')
{
  intro
  [[ $ingest == true ]] && ingest_sections
  [[ $(r '.conn_scale != null') == true ]] && conn_scale_section
  echo -n "Raw figures: [results.json](results.json)."
  [[ $ingest == true ]] && echo -n " Plot: ![throughput and P99](throughput.png)"
  echo
} >"$out/REPORT.md"

[[ $ingest == true ]] || exit 0
jq -r '.scale[] | "\(.devices) \(.samples_per_second) \(.p99_ms)"' "$results" >"$out/.plot.dat"
gnuplot <<EOF
set terminal pngcairo size 900,500 noenhanced
set output "$out/throughput.png"
set title "fleetd-server: throughput and P99 latency by fleet size ($(r .transport), $(r .cpus) shared CPUs)"
set logscale x
set xlabel "simulated devices"
set ylabel "acked samples/s"
set y2label "P99 latency (ms)"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set key top left
set grid
plot "$out/.plot.dat" using 1:2 with linespoints lw 2 pt 7 title "samples/s", \
     "" using 1:3 axes x1y2 with linespoints lw 2 pt 5 title "P99 ms"
EOF
rm -f "$out/.plot.dat"
