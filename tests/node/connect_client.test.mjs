// Independent client test: the official Connect-ES client (connect-node, code generated
// from proto/ by protoc-gen-es) calls a running fleetd-server over every protocol it
// serves — Connect (binary and JSON, POST and GET), gRPC-Web and gRPC over HTTP/2 — with
// gzip, and the bidirectional StreamSync (gRPC; through the front door also Connect and
// gRPC-Web over HTTP/2), and checks the answers, the auth errors, and that the metrics
// reached VictoriaMetrics.
//
// Started by tests/node/run.sh, which sets up the backends, the key and the server and
// passes them in the environment:
//   FLEETD_HTTP_URL     http://127.0.0.1:PORT (Connect and gRPC-Web, HTTP/1.1)
//   FLEETD_GRPC_URL     http://127.0.0.1:PORT (gRPC, HTTP/2 plaintext)
//   FLEETD_API_KEY      a key for FLEETD_DEVICE_ID in FLEETD_ORG_ID
//   FLEETD_DEVICE_ID, FLEETD_ORG_ID
//   FLEET_VICTORIAMETRICS_URL  where the server writes metrics
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import { gzipSync } from "node:zlib";

import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  Http2SessionManager,
  compressionGzip,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";

import {
  MetricsBatchSchema,
  SyncService,
} from "./gen/fleetd/v1/sync_pb.js";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this test through tests/node/run.sh`);
  return value;
}

const httpUrl = required("FLEETD_HTTP_URL");
const grpcUrl = required("FLEETD_GRPC_URL");
const apiKey = required("FLEETD_API_KEY");
const deviceId = required("FLEETD_DEVICE_ID");
const orgId = required("FLEETD_ORG_ID");
const vmUrl = required("FLEET_VICTORIAMETRICS_URL");
// Set (1) when the URLs are served by the front door (FLEET_FRONT_END=door, the
// default), which also serves StreamSync over Connect and gRPC-Web (HTTP/2); the
// deprecated legacy front ends serve it over gRPC only.
const door = process.env.FLEETD_DOOR === "1";

// Unique per run, so a sample found in VictoriaMetrics can only come from this run.
const runId = randomBytes(6).toString("hex");
const metricName = "node_client_test_value";
// Sequence numbers as upstream agents make them: Unix nanoseconds, +1 per request.
let nextSequence = BigInt(Date.now()) * 1_000_000n;

// Adds the device's API key to every call, as agents do (null: send no key).
function apiKeyInterceptor(key) {
  return (next) => async (req) => {
    if (key !== null) req.header.set("X-API-Key", key);
    return next(req);
  };
}

// HTTP/1.1 without keep-alive, so no idle socket outlives the test.
const http1 = { httpVersion: "1.1", nodeOptions: { agent: new http.Agent({ keepAlive: false }) } };
// gzip on every request (the server decompresses it, or the call fails), counted so the
// tests can check the transports really compressed.
const gzipped = { requests: 0, responses: 0 };
const countingGzip = {
  name: compressionGzip.name,
  compress: (bytes) => {
    gzipped.requests++;
    return compressionGzip.compress(bytes);
  },
  decompress: (bytes, readMaxBytes) => {
    gzipped.responses++;
    return compressionGzip.decompress(bytes, readMaxBytes);
  },
};
const gzip = {
  sendCompression: countingGzip,
  acceptCompression: [countingGzip],
  compressMinBytes: 0, // compress even the small test messages
};
const h2 = new Http2SessionManager(grpcUrl);
after(() => h2.abort());

const transports = {
  "connect-binary": (key) =>
    createConnectTransport({
      baseUrl: httpUrl, ...http1, ...gzip, useBinaryFormat: true,
      interceptors: [apiKeyInterceptor(key)],
    }),
  "connect-json": (key) =>
    createConnectTransport({
      baseUrl: httpUrl, ...http1, ...gzip, useBinaryFormat: false,
      interceptors: [apiKeyInterceptor(key)],
    }),
  "connect-get": (key) =>
    createConnectTransport({
      baseUrl: httpUrl, ...http1, useBinaryFormat: true, useHttpGet: true,
      interceptors: [apiKeyInterceptor(key)],
    }),
  "grpc-web": (key) =>
    createGrpcWebTransport({
      baseUrl: httpUrl, ...http1, ...gzip, useBinaryFormat: true,
      interceptors: [apiKeyInterceptor(key)],
    }),
  grpc: (key) =>
    createGrpcTransport({
      baseUrl: grpcUrl, httpVersion: "2", sessionManager: h2, ...gzip,
      interceptors: [apiKeyInterceptor(key)],
    }),
  // Connect and gRPC-Web over HTTP/2 (h2c): what bidirectional streams need.
  "connect-h2": (key) =>
    createConnectTransport({
      baseUrl: grpcUrl, httpVersion: "2", sessionManager: h2, ...gzip, useBinaryFormat: true,
      interceptors: [apiKeyInterceptor(key)],
    }),
  "connect-json-h2": (key) =>
    createConnectTransport({
      baseUrl: grpcUrl, httpVersion: "2", sessionManager: h2, ...gzip, useBinaryFormat: false,
      interceptors: [apiKeyInterceptor(key)],
    }),
  "grpc-web-h2": (key) =>
    createGrpcWebTransport({
      baseUrl: grpcUrl, httpVersion: "2", sessionManager: h2, ...gzip, useBinaryFormat: true,
      interceptors: [apiKeyInterceptor(key)],
    }),
};

function client(protocol, key = apiKey) {
  return createClient(SyncService, transports[protocol](key));
}

function metadata(extra = {}) {
  return { deviceId, orgId, sequenceNumber: nextSequence++, clientTime: timestampFromMs(Date.now()), ...extra };
}

function metric(protocol, value) {
  return {
    name: metricName,
    value,
    timestamp: timestampFromMs(Date.now()),
    labels: { run: runId, protocol },
  };
}

// Protocols carrying each case; the GET transport only serves side-effect-free methods.
const unaryProtocols = ["connect-binary", "connect-json", "grpc-web", "grpc"];
const allProtocols = [...unaryProtocols, "connect-get"];
const expectedSamples = new Map(); // protocol -> value sent
// StreamSync: gRPC on both setups, Connect and gRPC-Web through the front door.
const streamProtocols = door ? ["grpc", "connect-h2", "connect-json-h2", "grpc-web-h2"] : ["grpc"];

// Requests for a bidirectional call, written one by one while responses are read.
function requestQueue() {
  const items = [];
  let wake = null;
  let ended = false;
  return {
    push(item) {
      items.push(item);
      if (wake) wake();
    },
    end() {
      ended = true;
      if (wake) wake();
    },
    async *[Symbol.asyncIterator]() {
      for (;;) {
        if (items.length > 0) {
          yield items.shift();
        } else if (ended) {
          return;
        } else {
          await new Promise((resolve) => (wake = resolve));
          wake = null;
        }
      }
    },
  };
}

// The next ack among a stream's responses (config updates and other commands skipped).
async function nextAck(responses) {
  for (;;) {
    const { value, done } = await responses.next();
    assert.ok(!done, "the stream ended before the ack");
    if (value.command.case === "ack") return value.command.value;
  }
}

async function expectCode(promise, code) {
  await assert.rejects(promise, (err) => {
    const e = ConnectError.from(err);
    assert.equal(e.code, code, `want ${Code[code]}, got ${Code[e.code]}: ${e.message}`);
    return true;
  });
}

describe("fleetd-server through connect-node", () => {
  for (const protocol of allProtocols) {
    test(`${protocol}: GetSyncConfig returns the tier's config`, async () => {
      const res = await client(protocol).getSyncConfig({
        deviceId,
        capability: { tier: 2, totalRam: 256n << 20n, totalDisk: 1n << 30n },
      });
      assert.ok(res.config, "config is set");
      assert.ok(res.config.batchSize > 0, `batch size ${res.config.batchSize}`);
      assert.ok(res.config.syncIntervalSeconds > 0);
      assert.equal(res.enableBatching, true);
    });

    test(`${protocol}: GetSyncConfig without a key is Unauthenticated`, async () => {
      await expectCode(client(protocol, null).getSyncConfig({ deviceId }), Code.Unauthenticated);
    });

    test(`${protocol}: GetSyncConfig with an invalid key is Unauthenticated`, async () => {
      await expectCode(
        client(protocol, "fleetd_not_a_real_key_" + runId).getSyncConfig({ deviceId }),
        Code.Unauthenticated,
      );
    });

    test(`${protocol}: GetSyncConfig for another device is PermissionDenied`, async () => {
      await expectCode(
        client(protocol).getSyncConfig({ deviceId: deviceId + "-other" }),
        Code.PermissionDenied,
      );
    });
  }

  for (const [i, protocol] of unaryProtocols.entries()) {
    test(`${protocol}: SyncMetrics stores a batch and acknowledges its sequence number`, async () => {
      const value = 1000 + i;
      const md = metadata();
      const compressedBefore = gzipped.requests;
      const res = await client(protocol).syncMetrics({
        metadata: md,
        batch: { metrics: [metric(protocol, value)] },
      });
      assert.equal(res.success, true, res.errorMessage);
      assert.equal(res.lastSequenceAck, md.sequenceNumber);
      assert.equal(res.duplicate, false);
      assert.ok(gzipped.requests > compressedBefore, "the request went gzip-compressed");
      expectedSamples.set(protocol, value);

      // The same batch again (a retry after a lost ack) is acknowledged as a duplicate.
      const again = await client(protocol).syncMetrics({
        metadata: md,
        batch: { metrics: [metric(protocol, value)] },
      });
      assert.equal(again.success, true);
      assert.equal(again.duplicate, true);
    });

    test(`${protocol}: SyncMetrics for another device is PermissionDenied`, async () => {
      await expectCode(
        client(protocol).syncMetrics({
          metadata: metadata({ deviceId: deviceId + "-other" }),
          batch: { metrics: [metric(protocol, 1)] },
        }),
        Code.PermissionDenied,
      );
    });

    test(`${protocol}: SyncMetrics without a key is Unauthenticated`, async () => {
      await expectCode(
        client(protocol, null).syncMetrics({
          metadata: metadata(),
          batch: { metrics: [metric(protocol, 1)] },
        }),
        Code.Unauthenticated,
      );
    });
  }

  test("connect-binary: SyncMetrics with in-message gzip compression and checksum", async () => {
    const protocol = "in-message-gzip";
    const inner = create(MetricsBatchSchema, { metrics: [metric(protocol, 2000)] });
    const raw = toBinary(MetricsBatchSchema, inner);
    const md = metadata({ checksum: createHash("sha256").update(raw).digest(), recordCount: 1 });
    const res = await client("connect-binary").syncMetrics({
      metadata: md,
      batch: { compression: "gzip", compressedData: gzipSync(raw), originalSize: raw.length },
    });
    assert.equal(res.success, true, res.errorMessage);
    assert.equal(res.lastSequenceAck, md.sequenceNumber);
    expectedSamples.set(protocol, 2000);

    // A wrong checksum is refused as InvalidArgument.
    const bad = metadata({ checksum: Buffer.alloc(32, 7) });
    await expectCode(
      client("connect-binary").syncMetrics({
        metadata: bad,
        batch: { compression: "gzip", compressedData: gzipSync(raw), originalSize: raw.length },
      }),
      Code.InvalidArgument,
    );
  });

  for (const [i, protocol] of streamProtocols.entries()) {
    test(`${protocol}: StreamSync acknowledges each batch while the stream stays open`, async () => {
      const label = `stream-${protocol}`;
      const requests = requestQueue();
      const responses = client(protocol).streamSync(requests)[Symbol.asyncIterator]();
      const values = [3000 + 10 * i, 3001 + 10 * i];
      const start = Date.now();
      for (const [k, value] of values.entries()) {
        const md = metadata();
        // Distinct timestamps, so both samples are kept (and exported in this order).
        const sample = { ...metric(label, value), timestamp: timestampFromMs(start + k) };
        requests.push({ metadata: md, data: { case: "metrics", value: { metrics: [sample] } } });
        // Full duplex: the ack arrives before the client half-closes.
        const ack = await nextAck(responses);
        assert.equal(ack.sequenceNumber, md.sequenceNumber);
        assert.equal(ack.success, true, ack.errorMessage);
      }
      requests.end();
      for (;;) {
        const { done } = await responses.next();
        if (done) break; // ended with OK: a failed stream throws here
      }
      expectedSamples.set(label, values);
    });
  }

  test("StreamSync without a key is Unauthenticated", async () => {
    const requests = requestQueue();
    requests.end();
    const responses = client(streamProtocols[streamProtocols.length - 1], null).streamSync(requests);
    await expectCode(
      (async () => {
        for await (const response of responses) void response;
      })(),
      Code.Unauthenticated,
    );
  });

  // Runs after the SyncMetrics tests above (node:test runs tests in a suite in order).
  test("every acknowledged sample is in VictoriaMetrics", async () => {
    assert.equal(
      expectedSamples.size,
      unaryProtocols.length + 1 + streamProtocols.length,
      "all SyncMetrics and StreamSync tests passed",
    );
    const deadline = Date.now() + 30_000;
    let found = new Map();
    while (Date.now() < deadline) {
      await fetch(`${vmUrl}/internal/force_flush`);
      const url = new URL(`${vmUrl}/api/v1/export`);
      url.searchParams.set("match[]", `${metricName}{run="${runId}"}`);
      const body = await (await fetch(url)).text();
      found = new Map();
      for (const line of body.split("\n").filter((l) => l.trim() !== "")) {
        const series = JSON.parse(line);
        assert.equal(series.metric.device_id, deviceId, "device_id label comes from the key");
        assert.equal(series.metric.org_id, orgId, "org_id label comes from the key");
        found.set(series.metric.protocol, series.values);
      }
      if (found.size >= expectedSamples.size) break;
      await new Promise((resolve) => setTimeout(resolve, 200)); // poll interval, not a wait
    }
    for (const [protocol, value] of expectedSamples) {
      // Unary: sent twice (the retried duplicate) but stored once. Streams: each
      // acknowledged batch's sample once.
      const want = Array.isArray(value) ? value : [value];
      assert.deepEqual(found.get(protocol), want, `samples for protocol=${protocol}`);
    }
  });
});
