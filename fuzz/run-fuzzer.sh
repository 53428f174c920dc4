#!/usr/bin/env bash
# Runs one libFuzzer target the way ctest (label fuzz) and scripts/fuzz.sh do.
#
#   fuzz/run-fuzzer.sh [--fresh] BINARY NAME WORKDIR [libFuzzer flags ...]
#
# 1. Replays every file in fuzz/regressions/NAME/ (inputs that once crashed): any
#    failure fails the run.
# 2. Fuzzes with the given flags from WORKDIR/NAME/ (new inputs are written there; with
#    --fresh it is emptied first) plus the committed seeds fuzz/corpus/NAME/ and
#    fuzz/regressions/NAME/, which are only read. Crashing inputs are written to
#    WORKDIR/NAME.artifacts/. Exits with libFuzzer's status.
set -euo pipefail
fresh=0
if [[ ${1:-} == --fresh ]]; then
  fresh=1
  shift
fi
if (($# < 3)); then
  echo "usage: $0 [--fresh] BINARY NAME WORKDIR [libFuzzer flags ...]" >&2
  exit 2
fi
bin=$1 name=$2 work=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)

if ((fresh)); then rm -rf "${work:?}/$name"; fi
mkdir -p "$work/$name" "$work/$name.artifacts"
dirs=("$work/$name")
regressions=()
if [[ -d $here/regressions/$name ]]; then
  mapfile -t regressions < <(find "$here/regressions/$name" -type f ! -name '*.md' | sort)
fi
if ((${#regressions[@]} > 0)); then
  echo "run-fuzzer: replaying ${#regressions[@]} regression input(s) of $name"
  "$bin" "${regressions[@]}"
  dirs+=("$here/regressions/$name")
fi
if [[ -d $here/corpus/$name ]]; then dirs+=("$here/corpus/$name"); fi
exec "$bin" -print_final_stats=1 -artifact_prefix="$work/$name.artifacts/" "$@" "${dirs[@]}"
