#!/usr/bin/env bash
# Checks that the README's configuration reference lists exactly the settings the
# binaries have: the variable, flag and default of every row under "### Server" and
# "### Agent" must match `fleetd-server --help` / `fleetd --help` ([env NAME], --flag,
# (default ...)), with nothing missing and nothing extra.
# usage: scripts/check-readme-settings.sh FLEETD_SERVER_BINARY FLEETD_AGENT_BINARY [README]
set -euo pipefail
if (($# < 2)); then
  echo "usage: $0 FLEETD_SERVER_BINARY FLEETD_AGENT_BINARY [README]" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
readme=${3:-$root/README.md}
server_help=$("$1" --help)
agent_help=$("$2" --help)
SERVER_HELP=$server_help AGENT_HELP=$agent_help python3 - "$readme" <<'PY'
import os, re, sys

def from_help(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s+(--[a-z0-9-]+) \S+\s+.*? \[env ([A-Z0-9_]+)\](?: \(default ([^)]*)\))?\s*$", line)
        if m:
            out[m.group(2)] = (m.group(1), m.group(3) or "")
    return out

def from_readme(text, heading):
    m = re.search(r"^### " + re.escape(heading) + r".*?$(.*?)(?=^#{2,3} |\Z)", text, re.M | re.S)
    if not m:
        return None
    out = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`[A-Z0-9_]+`", cells[0]):
            default = cells[2].strip("`") if cells[2] not in ("—", "-", "") else ""
            out[cells[0].strip("`")] = (cells[1].strip("`"), default)
    return out

readme = open(sys.argv[1]).read()
errors = []
for heading, env in (("Server", "SERVER_HELP"), ("Agent", "AGENT_HELP")):
    want = from_help(os.environ[env])
    have = from_readme(readme, heading)
    if not want:
        errors.append(f"{heading}: --help lists no [env NAME] settings")
        continue
    if have is None:
        errors.append(f"README has no '### {heading}' section")
        continue
    for name in sorted(set(want) - set(have)):
        errors.append(f"{heading}: {name} ({want[name][0]}) is missing from the README")
    for name in sorted(set(have) - set(want)):
        errors.append(f"{heading}: README documents {name}, which the binary does not read")
    for name in sorted(set(want) & set(have)):
        if want[name] != have[name]:
            errors.append(f"{heading}: {name}: README says flag/default {have[name]}, "
                          f"--help says {want[name]}")
for e in errors:
    print("check-readme-settings: " + e, file=sys.stderr)
if errors:
    sys.exit(1)
print("check-readme-settings: ok")
PY
