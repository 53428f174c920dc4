#!/usr/bin/env bash
# Builds the libFuzzer targets (build-fuzz/, clang, ASan + UBSan) and fuzzes each one for a
# while, then writes fuzz/results/summary.tsv (format: fuzz/README.md).
#
#   scripts/fuzz.sh [--no-build] [SECONDS_PER_TARGET] [TARGET ...]
#
# SECONDS_PER_TARGET defaults to 60; TARGET defaults to every fuzzer (connect grpc_web
# decode metric_samples codec ingest log_lines connect_error). Targets run one after another, each on
# one core, keeping the inputs it finds in build-fuzz/fuzz-work/<target>/ across runs.
# A crash does not stop the others; the script then exits 1 and names the input to
# turn into a regression (fuzz/regressions/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=1
if [[ ${1:-} == --no-build ]]; then
  build=0
  shift
fi
seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 1)); then
  echo "usage: $0 [--no-build] [SECONDS_PER_TARGET] [TARGET ...]" >&2
  exit 2
fi
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(connect grpc_web decode metric_samples codec ingest log_lines connect_error)
fi
jobs=${FLEETD_JOBS:-$(nproc)}

if ((build)); then
  echo "== building the fuzzers (build-fuzz/)"
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DFLEETD_FUZZ=ON \
    -DFLEETD_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build-fuzz -j "$jobs"
fi

work=$root/build-fuzz/fuzz-work
results=$root/fuzz/results
mkdir -p "$work" "$results"
summary=$results/summary.tsv
tmp=$(mktemp)
trap 'rm -f "$tmp" "$tmp.log"' EXIT
printf 'target\tseconds\truns\tcov\tft\tcorpus\texec_per_sec\tpeak_rss_mb\tcrashes\tresult\tcommit\tdate\n' >"$tmp"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
failed=0
for t in "${targets[@]}"; do
  bin=$root/build-fuzz/bin/fuzz_$t
  if [[ ! -x $bin ]]; then
    echo "no fuzzer $bin (unknown target \"$t\"?)" >&2
    exit 2
  fi
  echo "== fuzz_$t for ${seconds}s"
  before=$(find "$work/$t.artifacts" -type f 2>/dev/null | wc -l)
  result=ok
  if ! fuzz/run-fuzzer.sh "$bin" "$t" "$work" -max_total_time="$seconds" \
    -timeout=10 -rss_limit_mb=2048 >"$tmp.log" 2>&1; then
    result=crash
    failed=1
  fi
  # The last status line: "#N  DONE  cov: C ft: F corp: U/B ..." (or the last
  # progress line when the run stopped on a crash).
  last=$(grep -E '^#[0-9]+.*cov: ' "$tmp.log" | tail -1 || true)
  field() { sed -nE "s/.*$1: ([0-9]+).*/\\1/p" <<<"$last"; }
  final_stat() { sed -nE "s/^stat::$1: *([0-9]+).*/\\1/p" "$tmp.log" | tail -1; }
  runs=$(final_stat number_of_executed_units)
  runs=${runs:-$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")}
  corpus=$(sed -nE 's/.*corp: ([0-9]+)\/.*/\1/p' <<<"$last")
  after=$(find "$work/$t.artifacts" -type f 2>/dev/null | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$seconds" "${runs:-0}" \
    "$(field cov)" "$(field ft)" "${corpus:-0}" "$(final_stat average_exec_per_sec)" \
    "$(final_stat peak_rss_mb)" "$((after - before))" "$result" "$commit" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$tmp"
  tail -n 1 "$tmp"
  if [[ $result != ok ]]; then
    grep -E 'ERROR|SUMMARY|invariant|Test unit written|artifact_prefix' "$tmp.log" | head -20 >&2
    echo "fuzz_$t failed: copy the input above into fuzz/regressions/$t/ and report it" >&2
    cp "$tmp.log" "$work/$t.last-failure.log"
  fi
done
cp "$tmp" "$summary"
echo "== wrote $summary"
column -t -s $'\t' "$summary" || cat "$summary"
exit "$failed"
