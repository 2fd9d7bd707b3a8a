// The phone's side of the agent protocol, against a scripted server and a scripted worker.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  PhoneSession, browserFacts, helloMessage, layerBatches, networksMessage, statsOnly, timingProtocol, websocketUrl,
} from "../../static/js/phone/agent-session.mjs";
import { STATS_FIELDS, timingStats } from "../../static/js/phone/stats.mjs";

const READY = { ort_version: "1.31.1", backend: "wasm", threads: 1, resolution_ms: 0.1 };
const STATS = timingStats([0.1, 0.12, 0.11]);

class FakeSocket extends EventTarget {
  constructor() { super(); this.sent = []; this.readyState = 1; }
  send(text) { this.sent.push(JSON.parse(text)); }
  open() { this.dispatchEvent(new Event("open")); }
  deliver(message) { this.dispatchEvent(Object.assign(new Event("message"), { data: JSON.stringify(message) })); }
}

/** Answers open with ``layers`` indices and times whatever it is asked (or fails when told to). */
class FakeWorker extends EventTarget {
  constructor(layers, { fail = null } = {}) { super(); this.layers = layers; this.fail = fail; this.posted = []; }
  postMessage(message) {
    this.posted.push(message);
    const reply = (data) => queueMicrotask(() => this.dispatchEvent(Object.assign(new Event("message"), { data })));
    if (message.type === "open") return reply({ type: "opened", id: message.id, layers: this.layers, networks: ["a", "b"] });
    if (this.fail) return reply({ type: "failed", id: message.id, message: this.fail });
    const indices = message.part === "networks" ? [0, 1] : message.indices;
    reply({ type: "timed", id: message.id, resolution_ms: 0.1, factor: 100,
            results: indices.map((index) => ({ index, stats: STATS, calls_per_batch: 40, samples_ms: [0.1, 0.12],
                                               drowns: message.probe === true && index % 2 === 0 })) });
  }
}

const tick = () => new Promise((resolve) => setImmediate(resolve));
async function until(condition) {
  for (let i = 0; i < 200 && !condition(); i++) await tick();
  assert.ok(condition(), "the condition never held");
}

function session(worker, socket = new FakeSocket()) {
  const events = [];
  const fetched = [];
  const intervals = [];
  const phone = new PhoneSession({
    socket, worker, token: "device-token-123", facts: browserFacts({ navigator: { hardwareConcurrency: 8 } }, READY),
    fetchFiles: async (path, authorization) => { fetched.push([path, authorization]); return new ArrayBuffer(8); },
    events: (event) => events.push(event), setInterval_: (fn, ms) => intervals.push(ms),
  });
  return { phone, socket, events, fetched, intervals };
}

test("the websocket URL carries no token and follows the page's scheme", () => {
  assert.equal(websocketUrl({ protocol: "http:", host: "192.168.1.5:8000" }), "ws://192.168.1.5:8000/ws/agent/");
  assert.equal(websocketUrl({ protocol: "https:", host: "lab.example" }), "wss://lab.example/ws/agent/");
});

test("the facts are what a browser knows; what it does not expose is null", () => {
  const facts = browserFacts({ navigator: { userAgent: "UA", platform: "Linux", hardwareConcurrency: 8 },
                               isSecureContext: false, crossOriginIsolated: false }, READY);
  assert.deepEqual(facts, { user_agent: "UA", platform: "Linux", mobile: null, cores: 8, memory_gb: null,
                            secure_context: false, cross_origin_isolated: false, timer_resolution_ms: 0.1,
                            onnxruntime_web: "1.31.1", backend: "wasm", threads: 1, agent: "netadapt-browser/1" });
  assert.ok(JSON.stringify(facts).length < 8000);
});

test("hello is the first message and carries the token; welcome starts the heartbeats", () => {
  const { socket, events, intervals } = session(new FakeWorker([]));
  socket.open();
  assert.equal(socket.sent.length, 1);
  const hello = socket.sent[0];
  assert.deepEqual(Object.keys(hello).sort(), ["agent", "backend", "facts", "protocol", "runtime", "runtime_version", "threads", "token", "type"]);
  assert.equal(hello.backend, "wasm");
  assert.equal(hello.threads, 1);
  assert.equal(hello.type, "hello");
  assert.equal(hello.token, "device-token-123");
  assert.equal(hello.runtime_version, "1.31.1");
  socket.deliver({ type: "welcome", device: 3, name: "Phone", runtime: "onnxruntime-web", threads: 1, heartbeat_seconds: 5 });
  assert.deepEqual(intervals, [5000]);
  assert.deepEqual(events.at(-1), { state: "paired", device: 3, name: "Phone" });
});

test("a request is served batch by batch: 16 layers, stored, 4 layers, stored, networks, done", async () => {
  const layers = Array.from({ length: 20 }, (_, i) => i + 100);
  const worker = new FakeWorker(layers);
  const { socket, events, fetched } = session(worker);
  socket.open();
  socket.deliver({ type: "welcome", device: 3 });
  socket.deliver({ type: "request", request: 7, files: "/api/v1/agent/requests/7/files", threads: 1,
                   protocol: { warmup: 10, rounds: 5, runs_per_round: 40, max_spread: 0.5, max_retries: 2 }, samples: true });
  await until(() => socket.sent.length === 2);
  assert.deepEqual(fetched, [["/api/v1/agent/requests/7/files", "Token device-token-123"]]);
  const first = socket.sent[1];
  assert.equal(first.type, "layers");
  assert.deepEqual(Object.keys(first.results), layers.slice(0, 16).map(String));
  // The stats, then how they were taken (devices/phone_protocol.py check_timed_stats).
  assert.deepEqual(Object.keys(first.results["100"]), [...STATS_FIELDS, "timer_resolution_ms", "calls_per_batch"]);
  assert.equal(first.results["100"].timer_resolution_ms, 0.1);
  assert.equal(first.results["100"].calls_per_batch, 40);
  socket.deliver({ type: "stored", request: 7, stored: 16, signatures_done: 16 });
  await until(() => socket.sent.length === 3);
  assert.deepEqual(Object.keys(socket.sent[2].results), layers.slice(16).map(String));
  socket.deliver({ type: "stored", request: 7, stored: 4, signatures_done: 20 });
  await until(() => socket.sent.length === 4);
  const networks = socket.sent[3];
  assert.equal(networks.type, "networks");
  assert.equal(networks.results.length, 2);
  assert.deepEqual(networks.results[0].samples_ms, [0.1, 0.12]);
  socket.deliver({ type: "done", request: 7 });
  await until(() => events.at(-1).state === "idle");
  const progress = events.filter((e) => e.state === "measuring").map((e) => [e.done, e.asked, e.drowned]);
  assert.deepEqual(progress, [[0, 20, 0], [16, 20, 8], [20, 20, 10]]);  // even indices drown here
  assert.deepEqual(worker.posted.map((m) => m.probe), [undefined, true, true, undefined]);
  assert.deepEqual(worker.posted.map((m) => m.type), ["open", "time-zip", "time-zip", "time-zip"]);
});

test("a measurement that fails here fails the request with an error naming it", async () => {
  const { socket } = session(new FakeWorker([1], { fail: "Error: cannot run layer.onnx" }));
  socket.open();
  socket.deliver({ type: "request", request: 9, files: "/f", protocol: { rounds: 2 } });
  await until(() => socket.sent.length === 2);
  assert.deepEqual(socket.sent[1], { type: "error", request: 9, message: "Error: cannot run layer.onnx" });
});

test("an error from the server about the request stops it, and nothing is said back", async () => {
  const { socket, events } = session(new FakeWorker([1]));
  socket.open();
  socket.deliver({ type: "request", request: 11, files: "/f", protocol: {} });
  await until(() => socket.sent.length === 2);
  socket.deliver({ type: "error", request: 11, message: "the request was cancelled" });
  await until(() => events.at(-1).state === "idle");
  assert.equal(socket.sent.length, 2);
});

test("a close with the revoke code says revoked; another close says offline", () => {
  for (const [code, state] of [[4001, "revoked"], [1006, "offline"]]) {
    const { socket, events } = session(new FakeWorker([]));
    socket.dispatchEvent(Object.assign(new Event("close"), { code }));
    assert.equal(events.at(-1).state, state);
  }
});

test("message helpers keep only the protocol's fields", () => {
  assert.deepEqual(Object.keys(statsOnly({ ...STATS, calls_per_batch: 3 })), STATS_FIELDS);
  assert.deepEqual(networksMessage(1, [{ stats: STATS, samples_ms: [1] }], false).results[0], statsOnly(STATS));
  assert.deepEqual(layerBatches([1, 2, 3], 2), [[1, 2], [3]]);
  assert.equal(helloMessage("t", { onnxruntime_web: "1.31.1" }).runtime, "onnxruntime-web");
});

test("the timing protocol keeps the server's defaults and refuses what it cannot run", () => {
  assert.deepEqual(timingProtocol(), { warmup: 10, rounds: 5, runs_per_round: 40, max_spread: 0.5, max_retries: 2 });
  assert.equal(timingProtocol({ rounds: 3 }).rounds, 3);
  for (const [fields, message] of [[{ rounds: 0 }, /rounds/], [{ warmup: 1.5 }, /warmup/], [{ max_spread: 0 }, /max_spread/],
                                   [{ threads: 2 }, /unknown/], [{ runs_per_round: "40" }, /runs_per_round/]]) {
    assert.throws(() => timingProtocol(fields), message);
  }
});

test("a request whose protocol cannot be run fails before anything is downloaded", async () => {
  const { socket, fetched } = session(new FakeWorker([1]));
  socket.open();
  socket.deliver({ type: "request", request: 12, files: "/f", protocol: { rounds: 0 } });
  await until(() => socket.sent.length === 2);
  assert.equal(socket.sent[1].type, "error");
  assert.match(socket.sent[1].message, /protocol.rounds/);
  assert.deepEqual(fetched, []);
});

test("after the socket closed, a request in progress stops instead of waiting forever", async () => {
  const { phone, socket, events } = session(new FakeWorker([1]));
  socket.open();
  socket.deliver({ type: "request", request: 13, files: "/f", protocol: {} });
  await until(() => socket.sent.length === 2); // the layers were sent; it waits for stored
  socket.readyState = 3;
  socket.dispatchEvent(Object.assign(new Event("close"), { code: 1006 }));
  await until(() => events.at(-1).state === "idle");
  assert.equal(phone.current, null);
  assert.equal(socket.sent.length, 2);
});
