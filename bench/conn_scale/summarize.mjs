// Merges the conn-scale client processes' output (client.mjs --records and
// --summary files) into one JSON object on stdout: the calls of the steady
// window (intended send time in [--from, --to), epoch ms), every call of the
// run, and the clients' view of the connections.
//
//   node summarize.mjs --from MS --to MS --records FILE... --summary FILE...
import fs from "node:fs";
import { parseArgs } from "node:util";

const { values: opt } = parseArgs({
  options: {
    from: { type: "string" },
    to: { type: "string" },
    records: { type: "string", multiple: true, default: [] },
    summary: { type: "string", multiple: true, default: [] },
  },
});
const from = Number(opt.from);
const to = Number(opt.to);
const recordFiles = opt.records;
const summaryFiles = opt.summary;

function bump(map, key, n = 1) {
  map[key] = (map[key] ?? 0) + n;
}
// Nearest rank on sorted latencies.
function percentile(sorted, q) {
  return sorted.length > 0 ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : null;
}
function figures(latencies, errors) {
  const sorted = Float64Array.from(latencies).sort();
  const errorCount = Object.values(errors).reduce((a, b) => a + b, 0);
  return {
    calls: sorted.length,
    ok: sorted.length - errorCount,
    errors,
    p50_ms: percentile(sorted, 0.5),
    p90_ms: percentile(sorted, 0.9),
    p99_ms: percentile(sorted, 0.99),
    max_ms: sorted.length > 0 ? sorted[sorted.length - 1] : null,
  };
}

const steady = { latencies: [], errors: {} };
const byProtocol = {};
const all = { latencies: [], errors: {} };
let warmCalls = 0;
for (const file of recordFiles) {
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    if (line === "") continue;
    const [intended, latency, code, protocol, phase] = line.split(" ");
    const t = Number(intended);
    const ms = Number(latency);
    all.latencies.push(ms);
    if (code !== "ok") bump(all.errors, code);
    if (phase === "warm") warmCalls++;
    if (phase !== "run" || t < from || t >= to) continue;
    steady.latencies.push(ms);
    if (code !== "ok") bump(steady.errors, code);
    const p = (byProtocol[protocol] ??= { latencies: [], errors: {} });
    p.latencies.push(ms);
    if (code !== "ok") bump(p.errors, code);
  }
}

const summaries = summaryFiles.map((f) => JSON.parse(fs.readFileSync(f, "utf8")));
const sum = (key) => summaries.reduce((a, s) => a + (s[key] ?? 0), 0);
const max = (get) => summaries.reduce((a, s) => Math.max(a, get(s) ?? 0), 0);
const merged = (key) => {
  const m = {};
  for (const s of summaries) for (const [k, v] of Object.entries(s[key] ?? {})) bump(m, k, v);
  return m;
};

const out = {
  window: { from_ms: from, to_ms: to, seconds: (to - from) / 1000 },
  steady: {
    ...figures(steady.latencies, steady.errors),
    by_protocol: Object.fromEntries(
      Object.entries(byProtocol).map(([p, v]) => [p, figures(v.latencies, v.errors)]),
    ),
  },
  all_calls: { ...figures(all.latencies, all.errors), warm_calls: warmCalls },
  connections: {
    devices: sum("devices"),
    connected_devices: sum("connected_devices"),
    handshakes: sum("handshakes"),
    reconnections: sum("handshakes") - sum("connected_devices"),
    handshake_failures: merged("handshake_failures"),
    connection_errors: merged("connection_errors"),
    unexpected_closes: sum("unexpected_closes"),
    alpn_mismatches: sum("alpn_mismatches"),
    handshake_p99_ms_worst_process: max((s) => s.handshake_ms?.p99),
    handshake_max_ms: max((s) => s.handshake_ms?.max),
  },
  clients: {
    processes: summaries.length,
    late_starts: sum("late_starts"),
    max_timer_lag_ms: max((s) => s.max_timer_lag_ms),
    calls_unfinished: sum("calls_unfinished"),
    rss_kb_at_open: sum("rss_kb_at_open"),
  },
};
process.stdout.write(JSON.stringify(out) + "\n");
