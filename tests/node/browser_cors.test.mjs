// Browser test: a real Chromium (Debian's, driven by playwright-core; nothing downloads a
// browser) loads a page from one origin and calls the front door, another origin, with
// fetch: the Connect protocol's JSON unary calls, which need a CORS preflight (custom
// headers, a JSON body). The door allows the page's origin (FLEET_DOOR_CORS_ORIGINS) and
// no other, so the same call from a second page origin is blocked by the browser.
//
// Started by tests/node/run.sh, which starts the server and passes:
//   FLEETD_DOOR_URL      http://127.0.0.1:PORT (the front door)
//   FLEETD_PAGE_PORT     the port of the allowed page origin (http://127.0.0.1:PORT)
//   FLEETD_API_KEY, FLEETD_DEVICE_ID
//   FLEETD_CHROMIUM      the browser binary (default /usr/bin/chromium)
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";

import { chromium } from "playwright-core";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this test through tests/node/run.sh`);
  return value;
}

const doorUrl = required("FLEETD_DOOR_URL");
const pagePort = Number(required("FLEETD_PAGE_PORT"));
const apiKey = required("FLEETD_API_KEY");
const deviceId = required("FLEETD_DEVICE_ID");
const executablePath = process.env.FLEETD_CHROMIUM || "/usr/bin/chromium";

// Serves an empty page: the origin the browser's calls come from.
function pageServer(port) {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>fleet console</title>");
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

// Runs fetch in the page: a Connect unary JSON call of `method`. Returns what the page
// could read, or the error a blocked cross-origin call raises.
function callFromPage(page, method, body, key) {
  return page.evaluate(
    async ({ url, method, body, key }) => {
      const headers = { "content-type": "application/json", "connect-protocol-version": "1" };
      if (key) headers["x-api-key"] = key;
      try {
        const res = await fetch(`${url}/fleetd.v1.SyncService/${method}`, {
          method: "POST",
          headers,
          body: JSON.stringify(body),
        });
        return { status: res.status, body: await res.json(), retryAfter: res.headers.get("retry-after") };
      } catch (err) {
        return { error: String(err) };
      }
    },
    { url: doorUrl, method, body, key },
  );
}

describe("the front door from a browser page of another origin", () => {
  let browser;
  let allowedPage;
  let otherPage;
  const servers = [];

  before(async () => {
    servers.push(await pageServer(pagePort));
    const other = await pageServer(0);
    servers.push(other);
    browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
    allowedPage = await browser.newPage();
    await allowedPage.goto(`http://127.0.0.1:${pagePort}/`);
    otherPage = await browser.newPage();
    await otherPage.goto(`http://127.0.0.1:${other.address().port}/`);
  });

  after(async () => {
    if (browser) await browser.close();
    for (const server of servers) server.close();
  });

  test("an allowed origin calls GetSyncConfig after the preflight", async () => {
    const res = await callFromPage(
      allowedPage,
      "GetSyncConfig",
      { deviceId, capability: { tier: 2 } },
      apiKey,
    );
    assert.equal(res.error, undefined, res.error);
    assert.equal(res.status, 200);
    assert.ok(res.body.config.batchSize > 0, JSON.stringify(res.body));
  });

  test("an allowed origin reads the Connect error of a call without a key", async () => {
    const res = await callFromPage(allowedPage, "GetSyncConfig", { deviceId }, null);
    assert.equal(res.error, undefined, res.error);
    assert.equal(res.status, 401);
    assert.equal(res.body.code, "unauthenticated");
  });

  test("another origin is blocked by the browser", async () => {
    const res = await callFromPage(otherPage, "GetSyncConfig", { deviceId, capability: { tier: 2 } }, apiKey);
    assert.match(res.error ?? "", /Failed to fetch|TypeError/, JSON.stringify(res));
  });
});
