#!/usr/bin/env bash
# The main job: installs what it needs, builds, and shows FleetD Sync working: local
# backends (PostgreSQL, VictoriaMetrics, ClickHouse; Loki when FLEET_LOKI_URL points at
# one), the server with TLS 1.3, and an agent syncing this machine's metrics and logs,
# then a summary of what arrived in each backend (scripts/demo-stack.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${FLEETD_JOBS:-$(nproc)}

bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$jobs" --target fleetd fleetd-server fleetd-devstack
exec scripts/demo-stack.sh
