#!/usr/bin/env bash
# Development TLS certificates for the docker-compose stack: runs scripts/gen-dev-certs.sh
# into docker/certs (or $FLEETD_CERTS_DIR) with the compose service name fleetd-server in
# the certificate, and makes the key readable by the images' non-root user (uid 10001).
# Development only: production keys come from your PKI and stay mode 0600.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FLEETD_CERTS_DIR:-docker/certs}
bash scripts/gen-dev-certs.sh "$out" fleetd-server
if [[ $(id -u) -eq 0 ]]; then
  chown 10001:10001 "$out/server.key"
  chmod 0400 "$out/server.key"
else
  # Without root the file cannot be given to uid 10001; let the container read it.
  chmod 0644 "$out/server.key"
fi
chmod 0644 "$out/ca.pem" "$out/server.pem"
echo "docker-dev-certs: $out/{ca.pem,server.pem,server.key} ready for docker/docker-compose.yml"
