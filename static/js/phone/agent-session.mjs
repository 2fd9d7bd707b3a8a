// The page's side of the agent websocket protocol (devices/agent/protocol.py, docs/agent.md) for
// a device whose runtime is the browser's onnxruntime-web: the messages, the facts a browser
// knows, and one session that serves the device's measurement requests with the timing worker.
//
// The conversation is the Python agent's (devices/agent/client.py): hello -> welcome, heartbeats,
// then per request: download its zip, time the layers in batches of 16 and send each batch
// (layers -> stored), then the whole networks (networks -> done); error fails the request.
// Differences a browser forces: a websocket cannot carry an Authorization header, so the device
// token travels in the first message (hello.token), never in the URL; the file download is a
// fetch, which can carry the header.

export const PROTOCOL_VERSION = 1;
export const WEBSOCKET_PATH = "/ws/agent/";
export const AUTH_SCHEME = "Token";
export const RUNTIME = "onnxruntime-web";
export const AGENT = "netadapt-browser/1";
export const LAYER_BATCH = 16;  // the Python agent's DEFAULT_BATCH
export const CLOSE_REVOKED = 4001;
export const MAX_ERROR_CHARS = 2000;
const STATS_FIELDS = ["n", "min_ms", "p10_ms", "median_ms", "p90_ms", "mean_ms", "std_ms"];

/** ws(s)://host/ws/agent/ for a page at ``location``; no token, no query. */
export function websocketUrl(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${WEBSOCKET_PATH}`;
}

/**
 * What a browser can tell about its device. ``scope`` is the page's global (navigator,
 * isSecureContext, crossOriginIsolated); ``ready`` the timing worker's answer to init.
 */
export function browserFacts(scope, ready) {
  const nav = scope.navigator ?? {};
  return {
    user_agent: String(nav.userAgent ?? ""),
    platform: String(nav.userAgentData?.platform ?? nav.platform ?? ""),
    mobile: typeof nav.userAgentData?.mobile === "boolean" ? nav.userAgentData.mobile : null,
    cores: Number.isInteger(nav.hardwareConcurrency) ? nav.hardwareConcurrency : null,
    memory_gb: typeof nav.deviceMemory === "number" ? nav.deviceMemory : null,  // Chromium only, coarse
    secure_context: scope.isSecureContext === true,
    cross_origin_isolated: scope.crossOriginIsolated === true,
    timer_resolution_ms: ready.resolution_ms,
    onnxruntime_web: ready.ort_version,
    backend: ready.backend,
    threads: ready.threads,
    agent: AGENT,
  };
}

export function helloMessage(token, facts) {
  return { type: "hello", protocol: PROTOCOL_VERSION, agent: AGENT, runtime: RUNTIME,
           runtime_version: facts.onnxruntime_web, backend: facts.backend, threads: facts.threads, facts, token };
}

/** The statistics alone, as check_stats accepts them (no unknown field). */
export function statsOnly(stats) {
  return Object.fromEntries(STATS_FIELDS.map((field) => [field, stats[field]]));
}

/**
 * How a layer's stats were taken, as devices/phone_protocol.py accepts them next to the stats:
 * the clock's resolution, the calls each timed batch held, the per-call overhead where probed.
 */
export function timingMetadata(result, resolutionMs) {
  const metadata = {};
  if (Number.isFinite(resolutionMs) && resolutionMs >= 0) metadata.timer_resolution_ms = resolutionMs;
  if (Number.isInteger(result.calls_per_batch) && result.calls_per_batch >= 1) metadata.calls_per_batch = result.calls_per_batch;
  if (Number.isFinite(result.overhead_ms) && result.overhead_ms >= 0) metadata.overhead_ms = result.overhead_ms;
  return metadata;
}

export function layersMessage(request, results, resolutionMs = null) {
  return { type: "layers", request, results: Object.fromEntries(results.map((r) => [
    String(r.index), { ...statsOnly(r.stats), ...timingMetadata(r, resolutionMs) }])) };
}

export function networksMessage(request, results, samples) {
  return { type: "networks", request, results: results.map((r) => (
    samples && r.samples_ms ? { ...statsOnly(r.stats), samples_ms: r.samples_ms } : statsOnly(r.stats))) };
}

export function errorMessage(request, message) {
  return { type: "error", request, message: String(message).slice(0, MAX_ERROR_CHARS) };
}

/** ``indices`` in batches of ``size``. */
export function layerBatches(indices, size = LAYER_BATCH) {
  const batches = [];
  for (let start = 0; start < indices.length; start += size) batches.push(indices.slice(start, start + size));
  return batches;
}

/** The timing protocol's defaults and limits (devices/agent/timing.py TimingProtocol). */
const PROTOCOL_DEFAULTS = { warmup: 10, rounds: 5, runs_per_round: 40, max_spread: 0.5, max_retries: 2 };
const PROTOCOL_LIMITS = { warmup: [0, 100_000], rounds: [1, 10_000], runs_per_round: [1, 100_000], max_retries: [0, 100] };

/**
 * The timing protocol of a ``request`` message: the fields it leaves out keep their defaults; an
 * unknown field or a value out of range is an Error (the request then fails, saying which).
 */
export function timingProtocol(fields = {}) {
  const unknown = Object.keys(fields ?? {}).filter((name) => !(name in PROTOCOL_DEFAULTS));
  if (unknown.length) throw new Error(`unknown timing protocol fields ${JSON.stringify(unknown.sort())}`);
  const protocol = { ...PROTOCOL_DEFAULTS, ...fields };
  for (const [name, [low, high]] of Object.entries(PROTOCOL_LIMITS)) {
    const value = protocol[name];
    if (!Number.isInteger(value) || value < low || value > high) {
      throw new Error(`protocol.${name} must be an integer in [${low}, ${high}], got ${JSON.stringify(value)}`);
    }
  }
  if (typeof protocol.max_spread !== "number" || !(protocol.max_spread > 0)) {
    throw new Error(`protocol.max_spread must be a number > 0, got ${JSON.stringify(protocol.max_spread)}`);
  }
  return protocol;
}

/**
 * One websocket session: says hello, beats, serves requests one at a time with ``worker`` (the
 * measure worker, already given its ``init``). ``events`` gets {state, ...} updates for the page:
 * connecting, paired (welcomed), measuring {request, done, asked}, idle, offline, revoked.
 */
export class PhoneSession {
  constructor({ socket, worker, token, facts, fetchFiles, events = () => {},
               // A wrapper: a browser's setInterval called as this.setInterval is an "Illegal invocation".
               setInterval_ = (run, ms) => setInterval(run, ms) }) {
    this.socket = socket;
    this.worker = worker;
    this.token = token;
    this.facts = facts;
    this.fetchFiles = fetchFiles;  // (path, authorization) => Promise<ArrayBuffer>
    this.events = events;
    this.setInterval = setInterval_;
    this.waiters = [];
    this.nextId = 1;
    this.current = null;
    this.closed = false;
    socket.addEventListener("open", () => this.send(helloMessage(token, facts)));
    socket.addEventListener("message", (event) => this.receive(event.data));
    socket.addEventListener("close", (event) => {
      clearInterval(this.beats);
      this.closed = true;
      this.events({ state: event.code === CLOSE_REVOKED ? "revoked" : "offline", code: event.code });
      for (const waiter of this.waiters.splice(0)) waiter.reject(new Error("the connection closed"));
    });
    events({ state: "connecting" });
  }

  send(message) {
    this.socket.send(JSON.stringify(message));
  }

  receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message === null || typeof message !== "object" || typeof message.type !== "string") return;
    if (message.type === "welcome") {
      const seconds = Number(message.heartbeat_seconds) > 0 ? Number(message.heartbeat_seconds) : 15;
      this.beats = this.setInterval(() => this.send({ type: "heartbeat" }), seconds * 1000);
      this.events({ state: "paired", device: message.device, name: message.name });
      return;
    }
    const waiter = this.waiters.find((w) => w.types.includes(message.type) && w.request === message.request);
    if (waiter) {
      this.waiters.splice(this.waiters.indexOf(waiter), 1);
      waiter.resolve(message);
    } else if (message.type === "error" && this.current !== null && message.request === this.current) {
      // The server stopped this request: stop working on it, and say nothing back.
      const stopped = Object.assign(new Error(String(message.message)), { abandoned: true });
      for (const w of this.waiters.splice(0)) w.reject(stopped);
    } else if (message.type === "request" && this.current === null) {
      this.serve(message);
    }
  }

  /** The server's next message of one of ``types`` about ``request``; rejected if the socket closes. */
  expect(types, request) {
    if (this.closed) return Promise.reject(new Error("the connection closed"));
    return new Promise((resolve, reject) => this.waiters.push({ types, request, resolve, reject }));
  }

  /** Posts ``message`` to the worker; its answer (``answer`` type) or its failure. */
  ask(message, answer) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const onMessage = ({ data }) => {
        if (data.id !== id) return;
        this.worker.removeEventListener("message", onMessage);
        if (data.type === answer) resolve(data);
        else reject(new Error(data.message));
      };
      this.worker.addEventListener("message", onMessage);
      this.worker.postMessage({ ...message, id });
    });
  }

  /** Serves one request; a failure of its own is sent as an error (which fails it). */
  async serve(message) {
    const request = message.request;
    this.current = request;
    try {
      const protocol = timingProtocol(message.protocol);
      const zip = await this.fetchFiles(message.files, `${AUTH_SCHEME} ${this.token}`);
      const opened = await this.ask({ type: "open", request, zip }, "opened");
      const common = { type: "time-zip", request, protocol, samples: message.samples === true };
      const asked = opened.layers.length;
      const drowned = [];
      let done = 0;
      for (const batch of layerBatches(opened.layers)) {
        this.events({ state: "measuring", request, done, asked, drowned: drowned.length });
        const timed = await this.ask({ ...common, part: "layers", indices: batch, probe: true }, "timed");
        this.send(layersMessage(request, timed.results, timed.resolution_ms));
        // The protocol has no field for these yet: the page shows them.
        drowned.push(...timed.results.filter((r) => r.drowns).map((r) => r.index));
        await this.expect(["stored"], request);
        done += batch.length;
      }
      this.events({ state: "measuring", request, done, asked, drowned: drowned.length });
      const networks = await this.ask({ ...common, part: "networks" }, "timed");
      this.send(networksMessage(request, networks.results, common.samples));
      await this.expect(["done"], request);
    } catch (error) {
      if (!error.abandoned && this.socket.readyState === 1) this.send(errorMessage(request, error.message));
    } finally {
      this.current = null;
      this.events({ state: "idle" });
    }
  }
}
