#!/usr/bin/env bash
# Runs the repo's pinned buf (npm @bufbuild/buf, installed by `npm ci`) from the repo root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x node_modules/.bin/buf ]]; then
  echo "buf is not installed: run 'npm ci' in $(pwd)" >&2
  exit 1
fi
exec node_modules/.bin/buf "$@"
