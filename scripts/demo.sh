#!/usr/bin/env bash
# The main job: installs what it needs, builds, and shows FleetD Sync working.
#
# When the server and the agent are built, it starts local backends (PostgreSQL,
# VictoriaMetrics, ClickHouse; Loki when FLEET_LOKI_URL points at one), the server and an
# agent, and prints what arrives in each backend. Until then it shows what exists: the
# wire codecs on realistic metric batches of each tier's size.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${FLEETD_JOBS:-$(nproc)}

bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$jobs"

if [[ -x build/bin/fleetd-server && -x build/bin/fleetd && -x scripts/demo-stack.sh ]]; then
  exec scripts/demo-stack.sh
fi

echo
echo "== FleetD Sync: wire codecs on serialized MetricsBatches (tier 3/2/1 batch sizes)"
build/bin/codec_benchmark --benchmark_min_time=0.2 \
  --benchmark_filter='BM_(Compress|Decompress)' --benchmark_counters_tabular=true
