// One client process of bench/run's conn-scale scenario: a slice of a simulated
// fleet, each device on its own long-lived TLS 1.3 connection to fleetd-server's
// front door, mostly idle, sending one SyncMetrics batch every period.
//
// Independent of the server's code, with one of two clients (--client):
//   raw         unary gRPC and Connect written out here on node:http2 (one
//               HTTP/2 session per device over its own TLS socket, ALPN h2),
//               messages by @bufbuild/protobuf from code generated from proto/
//               (./gen): about half the CPU per call of
//   connect-es  the official Connect-ES client (@connectrpc/connect-node), one
//               Http2SessionManager (so one session, one socket) per device.
// "connect-h1" devices use one keep-alive https.Agent with a single socket
// each instead (Connect over HTTP/1.1).
//
// Lifecycle, driven by bench/run (which starts several of these so none
// exceeds its file-descriptor limit):
//   1. start: opens the first --warm devices, each makes one call at once;
//      appends "warm <epoch-ms> <ok> <failed>" to --status.
//   2. SIGUSR1: opens the rest at --rate handshakes per second (at most
//      --max-pending handshakes under way), retrying a failed handshake after
//      1-2 s as a device would; appends "open <epoch-ms> <devices>" once every
//      device has a connection. From SIGUSR1 on, every open device sends a
//      batch at base + phase + k * period (phases spread uniformly over the
//      whole fleet, by global device index), one call at a time.
//   3. SIGTERM: schedules no more calls, lets calls in flight end (at most
//      --timeout-ms), writes --records (one line per call: intended send time
//      in epoch ms, latency in ms from that time, code, protocol, phase,
//      global device index) and
//      --summary (connection figures, JSON), closes every connection, exits 0.
//
// Latency runs from each call's intended send time, so a late timer counts
// against the figure (no coordinated omission).
import fs from "node:fs";
import http2 from "node:http2";
import https from "node:https";
import tls from "node:tls";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  Http2SessionManager,
  createConnectTransport,
  createGrpcTransport,
} from "@connectrpc/connect-node";

import {
  GetSyncConfigRequestSchema,
  SyncMetricsRequestSchema,
  SyncMetricsResponseSchema,
  SyncService,
} from "./gen/fleetd/v1/sync_pb.js";

const { values: opt } = parseArgs({
  options: {
    url: { type: "string" }, // https://127.0.0.1:PORT
    ca: { type: "string" }, // PEM the server's certificate chains to
    keys: { type: "string" }, // device_id,org_id,key lines (fleetd-server keys create --csv)
    first: { type: "string", default: "0" }, // this process's first line (global device index)
    count: { type: "string" }, // devices of this process
    protocols: { type: "string", default: "grpc,connect" }, // by global index, round robin
    client: { type: "string", default: "raw" }, // raw (node:http2) or connect-es
    "period-ms": { type: "string", default: "30000" },
    rate: { type: "string", default: "100" }, // handshakes per second, this process
    "max-pending": { type: "string", default: "64" },
    warm: { type: "string", default: "2" },
    "timeout-ms": { type: "string", default: "10000" },
    samples: { type: "string", default: "10" },
    status: { type: "string" },
    records: { type: "string" },
    summary: { type: "string" },
  },
});
for (const name of ["url", "ca", "keys", "count", "status", "records", "summary"]) {
  if (opt[name] === undefined) throw new Error(`--${name} is required`);
}
const url = new URL(opt.url);
// One context for every connection (tls.connect would build one per call
// from the CA's PEM, a measurable cost at thousands of handshakes).
const secureContext = tls.createSecureContext({
  ca: fs.readFileSync(opt.ca),
  minVersion: "TLSv1.3",
  maxVersion: "TLSv1.3",
});
const first = Number(opt.first);
const count = Number(opt.count);
const protocols = opt.protocols.split(",").filter((p) => p !== "");
const periodMs = Number(opt["period-ms"]);
const rate = Number(opt.rate);
const maxPending = Number(opt["max-pending"]);
const warmCount = Math.min(Number(opt.warm), count);
const timeoutMs = Number(opt["timeout-ms"]);
const samplesPerBatch = Number(opt.samples);
const known = new Set(["grpc", "connect", "connect-h1"]);
for (const p of protocols) if (!known.has(p)) throw new Error(`unknown protocol ${p}`);
if (opt.client !== "raw" && opt.client !== "connect-es") throw new Error(`unknown client ${opt.client}`);

const epochMs = (perfMs) => performance.timeOrigin + perfMs;
function status(line) {
  fs.appendFileSync(opt.status, `${line}\n`);
}
function bump(map, key) {
  map[key] = (map[key] ?? 0) + 1;
}

// ------------------------------------------------------------------ devices
const keyLines = fs
  .readFileSync(opt.keys, "utf8")
  .split("\n")
  .map((l) => l.trim())
  .filter((l) => l !== "" && !l.startsWith("#") && !l.startsWith("device_id,"));
if (keyLines.length < first + count) {
  throw new Error(`${opt.keys} has ${keyLines.length} keys, want ${first + count}`);
}

const stats = {
  handshakes: 0, // TLS handshakes completed (includes reconnections)
  handshakeFailures: {}, // by error code, before the handshake completed
  connectionErrors: {}, // by error code, after it
  unexpectedCloses: 0, // connections closed before SIGTERM
  alpnMismatches: 0, // handshakes that did not negotiate the protocol asked for
  handshakeMs: [],
  lateStarts: 0, // calls started more than 100 ms after their intended time
  maxTimerLagMs: 0,
};
let stopping = false;

// A TLS 1.3 connection to the server, counted: handshakes, their failures,
// and connections that end while the fleet still runs.
function openTls(alpn) {
  const t0 = performance.now();
  const sock = tls.connect({
    host: url.hostname,
    port: Number(url.port),
    secureContext,
    ALPNProtocols: [alpn],
  });
  sock.setNoDelay(true); // as agents' HTTP clients do (Go's, grpc++)
  let secured = false;
  sock.once("secureConnect", () => {
    secured = true;
    stats.handshakes++;
    stats.handshakeMs.push(performance.now() - t0);
    if (sock.alpnProtocol !== alpn) stats.alpnMismatches++;
  });
  sock.on("error", (err) => {
    bump(secured ? stats.connectionErrors : stats.handshakeFailures, err.code ?? err.message);
  });
  sock.once("close", () => {
    if (secured && !stopping) stats.unexpectedCloses++;
  });
  return sock;
}

// ------------------------------------------------------------------ two clients
// Each device object: open() -> Promise<boolean> (connected; the HTTP/1.1
// kinds make a GetSyncConfig call, which a device makes at start anyway),
// syncMetrics(message) -> Promise<code> ("ok" or a Code name), close().

// Connect-ES: the official client, one Http2SessionManager per device.
function connectEsDevice(dev) {
  let transport;
  let session = null;
  let agent = null;
  if (dev.protocol === "connect-h1") {
    agent = new https.Agent({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1 });
    agent.createConnection = () => openTls("http/1.1");
    transport = createConnectTransport({
      baseUrl: url.origin,
      httpVersion: "1.1",
      useBinaryFormat: true,
      nodeOptions: { agent },
    });
  } else {
    // Devices hold connections for days: no idle close, no keep-alive pings.
    session = new Http2SessionManager(
      url.origin,
      { idleConnectionTimeoutMs: 24 * 3600 * 1000 },
      { createConnection: () => openTls("h2") },
    );
    const common = { baseUrl: url.origin, httpVersion: "2", sessionManager: session };
    transport =
      dev.protocol === "grpc"
        ? createGrpcTransport(common)
        : createConnectTransport({ ...common, useBinaryFormat: true });
  }
  const client = createClient(SyncService, transport);
  const options = { timeoutMs, headers: { "x-api-key": dev.apiKey } };
  const codeOf = (err) => Code[ConnectError.from(err).code] ?? "Unknown";
  return {
    async open() {
      if (session) return (await session.connect()) !== "error";
      try {
        await client.getSyncConfig({ deviceId: dev.deviceId }, options);
        return true;
      } catch {
        return false;
      }
    },
    async syncMetrics(message) {
      try {
        return (await client.syncMetrics(message, options)).success ? "ok" : "not_success";
      } catch (err) {
        return codeOf(err);
      }
    },
    close() {
      session?.abort();
      agent?.destroy();
    },
  };
}

// "deadline_exceeded" (Connect's error body) -> "DeadlineExceeded" (Code).
const camel = (code) => code.replace(/(^|_)([a-z])/g, (_, __, c) => c.toUpperCase());
const connectErrorCode = (body) => {
  try {
    return camel(JSON.parse(body.toString()).code);
  } catch {
    return "Unknown";
  }
};
const PATH = "/fleetd.v1.SyncService/";

// Unary Connect or gRPC by hand on node:http2 (or, for connect-h1, on a
// keep-alive https.Agent with one socket): about half Connect-ES's CPU per
// call, which leaves the shared CPUs to the server.
function rawDevice(dev) {
  const grpc = dev.protocol === "grpc";
  let session = null;
  let agent = null;
  if (dev.protocol === "connect-h1") {
    agent = new https.Agent({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1 });
    agent.createConnection = () => openTls("http/1.1");
  }
  // The device's HTTP/2 session, opened again if it went away (as the
  // session manager does); resolves null if it cannot be opened.
  function h2() {
    if (session && !session.closed && !session.destroyed) return Promise.resolve(session);
    return new Promise((resolve) => {
      const s = http2.connect(url.origin, { createConnection: () => openTls("h2") });
      session = s;
      s.on("error", () => {}); // counted on the socket (openTls)
      s.once("connect", () => resolve(s));
      s.once("close", () => {
        if (session === s) session = null;
        resolve(null);
      });
    });
  }
  // One unary call: resolves { code, body } with code "ok" or a Code name.
  function unary(method, body) {
    const headers = { "x-api-key": dev.apiKey };
    let payload = body;
    if (grpc) {
      payload = Buffer.allocUnsafe(5 + body.length);
      payload[0] = 0;
      payload.writeUInt32BE(body.length, 1);
      payload.set(body, 5);
      Object.assign(headers, {
        "content-type": "application/grpc+proto",
        te: "trailers",
        "grpc-timeout": `${timeoutMs}m`,
      });
    } else {
      Object.assign(headers, {
        "content-type": "application/proto",
        "connect-protocol-version": "1",
        "connect-timeout-ms": String(timeoutMs),
      });
    }
    return new Promise((resolve) => {
      let settled = false;
      const finish = (code, data) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ code, body: data });
      };
      const timer = setTimeout(() => {
        finish("DeadlineExceeded");
        stream?.destroy();
      }, timeoutMs);
      let stream = null;
      const onResponse = (status, grpcStatus, data) => {
        if (grpc) {
          if (grpcStatus === undefined) return finish(status === 200 ? "Internal" : "Unavailable");
          if (grpcStatus !== "0") return finish(Code[Number(grpcStatus)] ?? "Unknown");
          return finish("ok", data.subarray(5));
        }
        if (status !== 200) return finish(connectErrorCode(data));
        finish("ok", data);
      };
      if (agent) {
        const req = https.request(
          url.origin + PATH + method,
          { agent, method: "POST", headers: { ...headers, "content-length": payload.length } },
          (res) => {
            const chunks = [];
            res.on("data", (c) => chunks.push(c));
            res.on("end", () => onResponse(res.statusCode, undefined, Buffer.concat(chunks)));
            res.on("error", () => finish("Unavailable"));
          },
        );
        stream = req;
        req.on("error", () => finish("Unavailable"));
        req.end(payload);
        return;
      }
      h2().then((s) => {
        if (s === null) return finish("Unavailable");
        if (settled) return;
        try {
          stream = s.request({ ":method": "POST", ":path": PATH + method, ...headers });
        } catch {
          return finish("Unavailable");
        }
        const chunks = [];
        let status = 0;
        let grpcStatus;
        stream.on("response", (h) => {
          status = h[":status"];
          grpcStatus = h["grpc-status"]; // a trailers-only answer
        });
        stream.on("trailers", (t) => {
          grpcStatus = t["grpc-status"];
        });
        stream.on("data", (c) => chunks.push(c));
        stream.on("end", () => onResponse(status, grpcStatus, Buffer.concat(chunks)));
        stream.on("error", () => finish("Unavailable"));
        stream.on("close", () => finish("Unavailable")); // no-op once answered
        stream.end(payload);
      });
    });
  }
  return {
    async open() {
      if (!agent) return (await h2()) !== null;
      const body = toBinary(
        GetSyncConfigRequestSchema,
        create(GetSyncConfigRequestSchema, { deviceId: dev.deviceId }),
      );
      return (await unary("GetSyncConfig", body)).code === "ok";
    },
    async syncMetrics(message) {
      const { code, body } = await unary(
        "SyncMetrics",
        toBinary(SyncMetricsRequestSchema, create(SyncMetricsRequestSchema, message)),
      );
      if (code !== "ok") return code;
      try {
        return fromBinary(SyncMetricsResponseSchema, body).success ? "ok" : "not_success";
      } catch {
        return "Internal";
      }
    },
    close() {
      session?.destroy();
      agent?.destroy();
    },
  };
}

function newDevice(g, line) {
  const [deviceId, orgId, apiKey] = line.split(",");
  const protocol = protocols[g % protocols.length];
  // Golden-ratio sequence: phases spread evenly over the period whatever
  // the fleet size, uncorrelated with the order devices connect in.
  const phaseMs = (((g + 1) * 0.6180339887498949) % 1) * periodMs;
  const dev = { g, deviceId, orgId, apiKey, protocol, phaseMs, open: false, timer: null };
  dev.seq = BigInt(Date.now()) * 1_000_000n + BigInt(g) * 1_000n;
  dev.impl = opt.client === "connect-es" ? connectEsDevice(dev) : rawDevice(dev);
  return dev;
}

const devices = keyLines.slice(first, first + count).map((line, i) => newDevice(first + i, line));

// ------------------------------------------------------------------ calls
const records = []; // "intended-epoch-ms latency-ms code protocol phase device-index"
let inFlight = 0;
let rampBase = null; // performance.now() at SIGUSR1

function batch(dev) {
  const now = Date.now();
  const metrics = [];
  for (let i = 0; i < samplesPerBatch; i++) {
    metrics.push({
      name: "bench_conn_scale",
      value: Math.random() * 100,
      timestamp: timestampFromMs(now),
      labels: { sample: String(i) },
    });
  }
  return {
    metadata: {
      deviceId: dev.deviceId,
      orgId: dev.orgId,
      sequenceNumber: dev.seq++,
      clientTime: timestampFromMs(now),
    },
    batch: { metrics },
  };
}

// One SyncMetrics call meant to start at `intended` (performance.now() ms).
async function call(dev, intended, phase) {
  const lag = performance.now() - intended;
  stats.maxTimerLagMs = Math.max(stats.maxTimerLagMs, lag);
  if (lag > 100) stats.lateStarts++;
  inFlight++;
  const code = await dev.impl.syncMetrics(batch(dev));
  const latency = performance.now() - intended;
  inFlight--;
  records.push(`${epochMs(intended).toFixed(1)} ${latency.toFixed(2)} ${code} ${dev.protocol} ${phase} ${dev.g}`);
  return code;
}

// The device's call number k (at base + phase + k * period), then the next
// one: a call that ends late makes the next start late, never skipped.
function schedule(dev, k) {
  if (stopping) return;
  const at = rampBase + dev.phaseMs + k * periodMs;
  dev.timer = setTimeout(async () => {
    dev.timer = null;
    await call(dev, at, "run");
    schedule(dev, k + 1);
  }, at - performance.now());
}
// The first call number due at or after `t` (performance.now() ms).
function firstCall(dev, t) {
  return Math.max(0, Math.ceil((t - rampBase - dev.phaseMs) / periodMs));
}

// ------------------------------------------------------------------ connections
let pending = 0;
let opened = 0;
function onOpen(dev) {
  dev.open = true;
  opened++;
  if (rampBase !== null) schedule(dev, firstCall(dev, performance.now()));
  if (opened === devices.length) {
    clientRssAtOpenKb = Math.round(process.memoryUsage().rss / 1024);
    status(`open ${Date.now()} ${opened}`);
  }
}

// Connects `dev`; resolves true once connected; on failure retries after
// 1-2 s unless stopping.
async function connect(dev) {
  pending++;
  const ok = await dev.impl.open();
  pending--;
  if (ok) {
    onOpen(dev);
    return true;
  }
  if (!stopping) {
    await new Promise((resolve) => setTimeout(resolve, 1000 + Math.random() * 1000));
    if (!stopping) return connect(dev);
  }
  return false;
}

// Keeps the process alive while it waits for a signal (idle sessions are
// unref'd by the session manager).
const keepAlive = setInterval(() => {}, 1 << 30);

let clientRssAtOpenKb = null;
let next = warmCount;
function ramp() {
  rampBase = performance.now();
  for (const dev of devices) if (dev.open) schedule(dev, 0);
  const tick = setInterval(() => {
    const due = Math.min(
      devices.length,
      warmCount + Math.floor(((performance.now() - rampBase) * rate) / 1000) + 1,
    );
    while (next < due && pending < maxPending) connect(devices[next++]);
    if (next >= devices.length || stopping) clearInterval(tick);
  }, 5);
}

async function stop() {
  if (stopping) return;
  stopping = true;
  for (const dev of devices) if (dev.timer !== null) clearTimeout(dev.timer);
  const deadline = performance.now() + timeoutMs + 1000;
  while (inFlight > 0 && performance.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20)); // poll for the last answers
  }
  fs.writeFileSync(opt.records, records.length > 0 ? records.join("\n") + "\n" : "");
  const hs = stats.handshakeMs.sort((a, b) => a - b);
  const pct = (q) => (hs.length > 0 ? hs[Math.min(hs.length - 1, Math.ceil(q * hs.length) - 1)] : null);
  fs.writeFileSync(
    opt.summary,
    JSON.stringify({
      first,
      devices: devices.length,
      connected_devices: opened,
      handshakes: stats.handshakes,
      handshake_failures: stats.handshakeFailures,
      connection_errors: stats.connectionErrors,
      unexpected_closes: stats.unexpectedCloses,
      alpn_mismatches: stats.alpnMismatches,
      handshake_ms: { p50: pct(0.5), p99: pct(0.99), max: hs.length > 0 ? hs[hs.length - 1] : null },
      late_starts: stats.lateStarts,
      max_timer_lag_ms: stats.maxTimerLagMs,
      calls_unfinished: inFlight,
      rss_kb_at_open: clientRssAtOpenKb,
      rss_kb_at_stop: Math.round(process.memoryUsage().rss / 1024),
    }) + "\n",
  );
  for (const dev of devices) dev.impl.close();
  clearInterval(keepAlive);
  process.exit(0);
}

process.on("SIGUSR1", () => {
  if (rampBase === null && !stopping) ramp();
});
process.on("SIGTERM", () => void stop());

// Warm-up: a handful of devices connected and served once, so the server
// has started whatever it starts lazily before the harness counts threads.
const warm = devices.slice(0, warmCount);
const warmOk = await Promise.all(
  warm.map(async (dev) => {
    if (!(await connect(dev))) return false;
    return (await call(dev, performance.now(), "warm")) === "ok";
  }),
);
status(`warm ${Date.now()} ${warmOk.filter(Boolean).length} ${warmOk.filter((x) => !x).length}`);
