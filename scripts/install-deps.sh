#!/usr/bin/env bash
# Installs, idempotently, every Debian package the build, the tests and the demo need.
# Safe to run repeatedly: packages already present are skipped without touching apt.
set -euo pipefail

PACKAGES=(
  # Toolchain.
  build-essential cmake ninja-build pkg-config clang-format git curl ca-certificates
  # clang and its libFuzzer/sanitizer runtimes (libclang-rt-dev) for the fuzz build.
  clang libclang-rt-dev
  # Libraries.
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libzstd-dev zlib1g-dev libsqlite3-dev libsqlcipher-dev sqlcipher sqlite3 libpqxx-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcurl4-openssl-dev libcpp-httplib-dev
  libsnappy-dev libssl-dev nlohmann-json3-dev libcli11-dev libgoogle-glog-dev
  # The front door (server/rpc/http): HTTP/2 (nghttp2), Boost.Asio and Boost.Beast.
  libnghttp2-dev libboost-dev
  # tcmalloc for the fleetd-server binary (server/app/CMakeLists.txt says why).
  libgoogle-perftools-dev
  # Real backends for tests and the demo.
  postgresql victoria-metrics clickhouse-server
  # Test and report tools.
  docker-compose gnuplot-nox openssl procps util-linux jq python3 python3-yaml
  # CPU profile of the server in bench/run (bench/results/profile.md; optional there).
  linux-perf
  # A real load balancer in front of the server in the fault tests.
  haproxy
  # A real browser for the cross-origin (CORS) test of the front door (tests/node),
  # driven by playwright-core, which never downloads a browser of its own.
  chromium
)
# Node.js runs the independent Connect client test; a machine may already carry a newer
# Node with its own npm (Debian's npm package conflicts with that), so only add it if absent.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} > 0)); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # Backends are started by our own fixtures; keep the packages' services from starting.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
