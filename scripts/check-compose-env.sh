#!/usr/bin/env bash
# Static check of docker/docker-compose.yml against the binaries (no Docker engine, no
# network):
#   - every FLEET_* / DEVICE_ID / ORG_ID / SYNC_INTERVAL / BATCH_SIZE / COMPRESSION_TYPE /
#     MAX_RETRIES variable the file sets for a fleetd-server or fleetd-agent container
#     (environment, or NAME=... in its entrypoint/command) is one the binary reads, as
#     listed by `fleetd-server --help` / `fleetd --help` ([env NAME]);
#   - the server's published ports, healthcheck and scrape targets use the ports its
#     FLEET_*_ADDR settings (or, unset, the binary's defaults) listen on, and the same
#     for Dockerfile.server's ENV/EXPOSE/HEALTHCHECK;
#   - the agent's FLEET_SERVER_URL points at the server's gRPC or HTTP port (per
#     FLEET_TRANSPORT) with https exactly when the server has TLS material.
# usage: scripts/check-compose-env.sh FLEETD_SERVER_BINARY FLEETD_AGENT_BINARY [COMPOSE_FILE]
set -euo pipefail
if (($# < 2)); then
  echo "usage: $0 FLEETD_SERVER_BINARY FLEETD_AGENT_BINARY [COMPOSE_FILE]" >&2
  exit 2
fi
server_bin=$1
agent_bin=$2
root=$(cd "$(dirname "$0")/.." && pwd)
compose=${3:-$root/docker/docker-compose.yml}
work=$(mktemp -d /tmp/fleetd-compose-check.XXXXXX)
trap 'rm -rf "$work"' EXIT

"$server_bin" --help >"$work/server-help.txt"
"$agent_bin" --help >"$work/agent-help.txt"
# The resolved file: defaults interpolated, YAML anchors merged.
docker-compose -f "$compose" config >"$work/compose.yml"

python3 - "$work" "$compose" <<'EOF'
import os, re, sys
import yaml  # python3-yaml, a dependency of Debian's docker-compose

work, compose_path = sys.argv[1], sys.argv[2]
docker_dir = os.path.dirname(os.path.abspath(compose_path))
errors = []

def help_settings(path):
    """NAME -> default (None when the help shows none), from `--help` lines."""
    out = {}
    for line in open(path):
        m = re.search(r"\[env ([A-Z0-9_]+)\](?: \(default ([^)]*)\))?", line)
        if m:
            out[m.group(1)] = m.group(2)
    if not out:
        errors.append(f"{path}: no [env NAME] entries in --help output")
    return out

server_env = help_settings(os.path.join(work, "server-help.txt"))
agent_env = help_settings(os.path.join(work, "agent-help.txt"))
doc = yaml.safe_load(open(os.path.join(work, "compose.yml")))
services = doc.get("services", {})

CHECKED = re.compile(r"^(FLEET_[A-Z0-9_]+|DEVICE_ID|ORG_ID|SYNC_INTERVAL|BATCH_SIZE|"
                     r"COMPRESSION_TYPE|MAX_RETRIES)$")

def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}

def shell_assignments(svc):
    words = []
    for key in ("entrypoint", "command"):
        v = svc.get(key) or []
        words += [v] if isinstance(v, str) else [str(w) for w in v]
    return set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", " ".join(words)))

def port_of(addr, what):
    m = re.search(r":(\d+)$", addr or "")
    if not m:
        errors.append(f"{what}: \"{addr}\" has no :port")
        return None
    return int(m.group(1))

def published(svc):
    """container port -> published spec, from short or long port syntax."""
    out = {}
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out[int(p["target"])] = p
        else:
            out[int(str(p).split(":")[-1].split("/")[0])] = p
    return out

kinds = {}
for name, svc in services.items():
    image = str(svc.get("image", ""))
    if image.startswith("fleetd-server:"):
        kinds[name] = ("fleetd-server", server_env)
    elif image.startswith("fleetd-agent:"):
        kinds[name] = ("fleetd", agent_env)
if not any(k[0] == "fleetd-server" for k in kinds.values()):
    errors.append("no service runs the fleetd-server image")
if not any(k[0] == "fleetd" for k in kinds.values()):
    errors.append("no service runs the fleetd-agent image")

# 1. Every checked variable is one the binary reads.
for name, (binary, known) in sorted(kinds.items()):
    svc = services[name]
    for var in sorted(set(env_of(svc)) | shell_assignments(services[name])):
        if CHECKED.match(var) and var not in known:
            errors.append(f"service {name}: {var} is not a setting of {binary} "
                          f"(see `{binary} --help`)")

# 2. The server's ports.
server = services.get("fleetd-server")
server_ports = {}
if server is None:
    errors.append("no service named fleetd-server")
else:
    env = env_of(server)
    for key in ("FLEET_GRPC_ADDR", "FLEET_HTTP_ADDR", "FLEET_ADMIN_ADDR"):
        addr = env.get(key, server_env.get(key))
        server_ports[key] = port_of(addr, f"fleetd-server {key}")
        if key != "FLEET_ADMIN_ADDR" and addr and not addr.startswith(("0.0.0.0:", "[::]:")):
            errors.append(f"fleetd-server {key}={addr}: must listen on all interfaces "
                          "to be reachable from other containers")
    pub = published(server)
    listening = set(server_ports.values())
    for target in pub:
        if target not in listening:
            errors.append(f"fleetd-server publishes container port {target}, but the "
                          f"server listens on {sorted(listening)}")
    for key in ("FLEET_GRPC_ADDR", "FLEET_HTTP_ADDR"):
        if server_ports[key] not in pub:
            errors.append(f"fleetd-server: {key} port {server_ports[key]} is not published")
    hc = " ".join(map(str, (server.get("healthcheck") or {}).get("test") or []))
    if f":{server_ports['FLEET_ADMIN_ADDR']}/healthz" not in hc:
        errors.append(f"fleetd-server healthcheck \"{hc}\" does not probe /healthz on the "
                      f"admin port {server_ports['FLEET_ADMIN_ADDR']}")
    has_tls = bool(env.get("FLEET_TLS_CERT")) and bool(env.get("FLEET_TLS_KEY"))
    if not has_tls and env.get("FLEET_INSECURE", "").lower() not in ("1", "true", "yes", "on"):
        errors.append("fleetd-server has neither FLEET_TLS_CERT+FLEET_TLS_KEY nor FLEET_INSECURE")

    # 3. The agent reaches it.
    for name, (binary, _) in sorted(kinds.items()):
        if binary != "fleetd":
            continue
        aenv = env_of(services[name])
        url = aenv.get("FLEET_SERVER_URL", "")
        m = re.match(r"^(https?)://([^:/]+):(\d+)/?$", url)
        if not m:
            errors.append(f"service {name}: FLEET_SERVER_URL \"{url}\" is not scheme://host:port")
            continue
        transport = aenv.get("FLEET_TRANSPORT", agent_env.get("FLEET_TRANSPORT") or "grpc")
        want = server_ports["FLEET_GRPC_ADDR" if transport == "grpc" else "FLEET_HTTP_ADDR"]
        if m.group(2) != "fleetd-server" or int(m.group(3)) != want:
            errors.append(f"service {name}: FLEET_SERVER_URL {url} is not fleetd-server:{want} "
                          f"(the server's {transport} port)")
        if (m.group(1) == "https") != has_tls:
            errors.append(f"service {name}: FLEET_SERVER_URL scheme {m.group(1)} does not match "
                          f"the server's TLS setting")
        if m.group(1) == "https" and not aenv.get("FLEET_CA_FILE"):
            errors.append(f"service {name}: https without FLEET_CA_FILE (development CA)")
        agent_pub = published(services[name])
        agent_ports = {port_of(aenv.get(k, agent_env.get(k)), f"{name} {k}")
                       for k in ("FLEET_INGEST_ADDR", "FLEET_METRICS_ADDR")}
        for target in agent_pub:
            if target not in agent_ports:
                errors.append(f"service {name} publishes {target}, but the agent listens on "
                              f"{sorted(agent_ports)}")

    # Scrape targets of VictoriaMetrics.
    scrape = os.path.join(docker_dir, "victoriametrics", "scrape.yml")
    if os.path.exists(scrape):
        targets = [t for job in yaml.safe_load(open(scrape)).get("scrape_configs", [])
                   for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
        want = {"fleetd-server": server_ports["FLEET_ADMIN_ADDR"]}
        for name, (binary, _) in kinds.items():
            if binary == "fleetd" and name in services:
                want[name] = port_of(env_of(services[name]).get(
                    "FLEET_METRICS_ADDR", agent_env.get("FLEET_METRICS_ADDR")), name)
        for t in targets:
            host, _, port = t.partition(":")
            if host in want and int(port) != want[host]:
                errors.append(f"{scrape}: target {t}, but {host} serves /metrics on {want[host]}")

# 4. Dockerfile.server: ENV addresses, EXPOSE and HEALTHCHECK agree.
dockerfile = os.path.join(docker_dir, "Dockerfile.server")
if os.path.exists(dockerfile):
    text = open(dockerfile).read().replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]  # the runtime stage
    env = dict(re.findall(r"\b(FLEET_[A-Z_]+_ADDR)=(\S+)", final))
    for var in env:
        if var not in server_env:
            errors.append(f"Dockerfile.server: ENV {var} is not a server setting")
    ports = {k: port_of(env.get(k, server_env.get(k)), f"Dockerfile.server {k}")
             for k in ("FLEET_GRPC_ADDR", "FLEET_HTTP_ADDR", "FLEET_ADMIN_ADDR")}
    expose = {int(p) for line in re.findall(r"^EXPOSE (.*)$", final, re.M)
              for p in line.split()}
    if expose != set(ports.values()):
        errors.append(f"Dockerfile.server: EXPOSE {sorted(expose)} != listen ports "
                      f"{sorted(ports.values())}")
    if f":{ports['FLEET_ADMIN_ADDR']}/healthz" not in final:
        errors.append("Dockerfile.server: HEALTHCHECK does not probe /healthz on the admin port")

if errors:
    for e in errors:
        print("check-compose-env: " + e, file=sys.stderr)
    sys.exit(1)
print(f"check-compose-env: ok ({len(kinds)} fleetd services, "
      f"{len(server_env)} server and {len(agent_env)} agent settings known)")
EOF
