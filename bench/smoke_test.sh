#!/usr/bin/env bash
# ctest smoke test (label `bench`): bench/run with tiny parameters (3 devices,
# 2 s, real backends and server; the four bursts and the three baselines on 3
# devices x 2 batches; no overload, no profile) must get samples acknowledged,
# no errors, CPU figures for every process and a rendered report; and
# conn-scale (60 devices on their own TLS connections, a batch every 2 s) must
# have every call succeed and the server's thread count at 60 connections
# equal to that with a handful.
#   bench/smoke_test.sh BUILD_DIR
set -euo pipefail
build=$1
out=$(mktemp -d /tmp/fleetd-bench-smoke.XXXXXX)
trap 'rm -rf "$out"' EXIT
BENCH_QUICK=1 BENCH_REBUILD=0 BENCH_BUILD_DIR=$build BENCH_OUT=$out \
  timeout 150 "$(dirname "$0")/run"
q=$out/quick.json
jq -c '{scale: [.scale[] | {samples_acked, errors}],
        bursts: [.bursts[] | {transport, samples_acked, drained, errors, cpu_s}],
        ceiling: .ceiling.samples_per_second, vmagent: .vmagent.rows_sent,
        vmagent_device_shaped: (.vmagent_device_shaped | {requests, rows_sent}), goal,
        conn_scale: (.conn_scale | {devices, steady: .steady.calls, errors: .all_calls.errors,
                                   threads: .server.threads, connections: .server.connections_established})}' "$q"
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
jq -e '.scale | length > 0 and all(.samples_acked > 0 and .errors == {})' "$q" >/dev/null ||
  fail "want samples acknowledged and no errors in every scale run"
jq -e '[.bursts[].transport] == ["grpc", "connect"]' "$q" >/dev/null ||
  fail "want a gRPC and a Connect burst"
jq -e --argjson s "$(jq .ceiling.samples "$q")" '.bursts | all(.drained and .samples_acked == $s and .errors == {} and
        (.cpu_s | [.server, .victoriametrics, .postgresql] | all(type == "number" and . >= 0)))' \
  "$q" >/dev/null ||
  fail "want every burst drained with the baselines' sample count, no errors and CPU figures"
jq -e '.ceiling.samples_per_second > 0 and .vmagent.rows_sent >= .vmagent.samples and
        (.vmagent.cpu_s.vmagent | type == "number") and (.goal.samples_per_second_ratio | type == "number")' \
  "$q" >/dev/null || fail "want both baselines measured and the goal's ratios computed"
jq -e '.vmagent_device_shaped as $d | $d.requests == .backlog.devices * .backlog.batches and
        $d.rows_sent >= $d.samples and $d.samples == .ceiling.samples and
        ($d.cpu_s.vmagent | type == "number") and
        (.goal.device_shaped.cpu_per_m_samples_ratio | type == "number")' "$q" >/dev/null ||
  fail "want the device-shaped vmagent fed one request per device batch, every sample sent and its ratios"
jq -e '.conn_scale as $c | $c.devices > 0 and $c.steady.calls == $c.devices * $c.hold_periods and
        $c.steady.errors == {} and $c.all_calls.errors == {} and $c.all_calls.calls > $c.steady.calls and
        $c.connections.handshakes == $c.devices and $c.connections.handshake_failures == {} and
        $c.connections.unexpected_closes == 0 and $c.server.connections_established.steady_start == $c.devices' \
  "$q" >/dev/null || fail "want every conn-scale call answered OK, each device on one connection"
jq -e '.conn_scale.server.threads | .steady_min == .handful and .steady_max == .handful' "$q" >/dev/null ||
  fail "want the server's thread count with every conn-scale connection open equal to that with a handful"
grep -q "Goal (issue 11)" "$out/REPORT.md" || fail "REPORT.md lacks the goal"
grep -q "device-shaped peer: vmagent fed" "$out/REPORT.md" || fail "REPORT.md lacks the device-shaped row"
grep -q "Connection scale: each device on its own TLS 1.3 connection" "$out/REPORT.md" ||
  fail "REPORT.md lacks the conn-scale section"
echo "bench smoke test: ok"
