#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: installs what it needs, builds with
# warnings as errors, runs every test through ctest (unit, lint, integration against real
# backends, end-to-end, benchmark smoke runs), then builds the unit tests again under
# AddressSanitizer + UndefinedBehaviorSanitizer and runs them, and last builds the
# libFuzzer targets with clang and runs each for a fixed number of inputs (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${FLEETD_JOBS:-$(nproc)}

echo "== installing dependencies"
bash scripts/install-deps.sh
npm ci --no-audit --no-fund --loglevel=error

echo "== building (build/)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$jobs"

echo "== ctest (build/)"
ctest --test-dir build --output-on-failure --timeout 900

echo "== sanitizer build (build-asan/: ASan + UBSan, unit tests)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DFLEETD_SANITIZE=ON \
  -DFLEETD_UNIT_ONLY=ON -DFLEETD_BUILD_BENCHMARKS=OFF
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan -L unit --output-on-failure --timeout 900

echo "== fuzz build (build-fuzz/: clang, libFuzzer + ASan + UBSan; fuzz/README.md)"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DFLEETD_FUZZ=ON \
  -DFLEETD_BUILD_BENCHMARKS=OFF
cmake --build build-fuzz -j "$jobs"
ctest --test-dir build-fuzz -L fuzz --output-on-failure --timeout 900

echo "== all tests passed ($root)"
