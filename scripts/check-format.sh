#!/usr/bin/env bash
# Fails (listing the files) if any of our C++ sources differs from clang-format's output.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files --cached --others --exclude-standard -- \
  '*.h' '*.cc' | grep -vE '^(build|node_modules)/' | while read -r f; do [[ -f $f ]] && echo "$f"; done)
bad=()
for f in "${files[@]}"; do
  if ! clang-format --style=file --dry-run --Werror "$f" >/dev/null 2>&1; then
    bad+=("$f")
  fi
done
if ((${#bad[@]} > 0)); then
  echo "clang-format: these files need formatting (run clang-format -i):"
  printf '  %s\n' "${bad[@]}"
  exit 1
fi
echo "clang-format: ${#files[@]} files formatted correctly"
