#!/usr/bin/env bash
# ctest smoke test (label `bench`): bench/run with tiny parameters (3 devices,
# 2 s, real backends and server) must get samples acknowledged and no errors.
#   bench/smoke_test.sh BUILD_DIR
set -euo pipefail
build=$1
out=$(mktemp -d /tmp/fleetd-bench-smoke.XXXXXX)
trap 'rm -rf "$out"' EXIT
BENCH_QUICK=1 BENCH_REBUILD=0 BENCH_BUILD_DIR=$build BENCH_OUT=$out \
  timeout 120 "$(dirname "$0")/run"
acked=$(jq .samples_acked "$out/quick.json")
errors=$(jq -c .errors "$out/quick.json")
echo "samples_acked=$acked errors=$errors"
if ((acked <= 0)) || [[ $errors != "{}" ]]; then
  echo "FAIL: want samples_acked > 0 and no errors" >&2
  exit 1
fi
