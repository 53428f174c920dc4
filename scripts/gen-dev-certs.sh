#!/usr/bin/env bash
# Generates a development CA and a server certificate for localhost / 127.0.0.1 (and any
# extra DNS names given), for running fleetd-server with TLS outside production.
#   scripts/gen-dev-certs.sh OUT_DIR [extra-dns-name ...]
# Writes OUT_DIR/ca.pem (give it to agents as FLEET_CA_FILE), OUT_DIR/server.pem and
# OUT_DIR/server.key (FLEET_TLS_CERT / FLEET_TLS_KEY). Existing files are kept.
set -euo pipefail
out=${1:?usage: gen-dev-certs.sh OUT_DIR [dns-name ...]}
shift
mkdir -p "$out"
if [[ -s $out/ca.pem && -s $out/server.pem && -s $out/server.key ]]; then
  exit 0
fi
san="DNS:localhost,IP:127.0.0.1,IP:::1"
for name in "$@"; do san="$san,DNS:$name"; done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=FleetD Sync development CA" -keyout "$out/ca.key" -out "$out/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
  2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=fleetd-server" -keyout "$out/server.key" -out "$out/server.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" >"$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
  -CAcreateserial -days 825 -extfile "$out/server.ext" -out "$out/server.pem" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 600 "$out/server.key" "$out/ca.key"
echo "gen-dev-certs: wrote $out/ca.pem, $out/server.pem, $out/server.key"
