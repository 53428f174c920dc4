#!/usr/bin/env bash
# Writes tests/faults/REPORT.md from the fault scenarios' results.
#
#   scripts/faults-report.sh          rewrite the report from the last results
#   scripts/faults-report.sh --run    build the fault tests, run `ctest -L faults`
#                                     on fresh results, then write the report
#
# BUILD_DIR (default build) and FLEETD_FAULTS_RESULTS (default
# $BUILD_DIR/faults/results.jsonl) are honoured.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
results="${FLEETD_FAULTS_RESULTS:-$build/faults/results.jsonl}"
export FLEETD_FAULTS_RESULTS="$results"

if [[ "${1:-}" == "--run" ]]; then
  cmake --build "$build" --target fault_proxy_test fault_scenarios_test
  mkdir -p "$(dirname "$results")"
  rm -f "$results"
  status=0
  ctest --test-dir "$build" -L faults --output-on-failure || status=$?
  python3 "$root/scripts/faults_report.py" "$results" "$root/tests/faults/REPORT.md" \
    "$root/fuzz/results/summary.tsv"
  exit "$status"
fi
python3 "$root/scripts/faults_report.py" "$results" "$root/tests/faults/REPORT.md" \
  "$root/fuzz/results/summary.tsv"
