// The phone page (templates/devices/phone.html): pairs by the code in the URL's fragment, keeps the
// device token in the browser's storage, and serves the device's measurement requests while open
// (agent-session.mjs over the agent websocket, timing in measure-worker.mjs).
//
// The code is read from ``#pair=...`` and the fragment is removed from the address at once, so it
// is neither in the history nor in a bookmark; a browser never sends a fragment to the server.
// The token stays in localStorage (Safari clears it after 7 days without use: the page then says
// to scan a new code). The pure parts (the fragment, the state texts) are exported for node tests.

import { CLOSE_REVOKED, PhoneSession, browserFacts, websocketUrl } from "./agent-session.mjs";
import { watchDocument } from "./visibility.mjs";

export const STORAGE_KEY = "netadapt-phone";
export const PAIR_PATH = "/api/v1/agent/pair";
const MAX_BACKOFF_MS = 30_000;

/** The pairing code of a ``#pair=CODE`` fragment, or null. */
export function codeOfFragment(hash) {
  const match = /^#pair=([A-Za-z0-9-]{4,64})$/.exec(hash ?? "");
  return match ? match[1] : null;
}

/** The state line and its detail for an event of PhoneSession (or of this page). */
export function describe(event) {
  switch (event.state) {
    case "connecting": return ["Connecting…", "Reaching the server."];
    case "paired": return ["Paired: waiting for work", `This phone is ${event.name}. Jobs that measure on it start here.`];
    case "idle": return ["Idle: waiting for work", "Nothing to measure right now. Keep this page open."];
    case "measuring": {
      const drowned = event.drowned ? ` ${event.drowned} of them are too quick for this browser's clock to tell apart.` : "";
      return ["Measuring", `Request ${event.request}: ${event.done} of ${event.asked} layers timed.${drowned}`];
    }
    case "offline": return ["Offline: reconnecting", "The connection dropped. The page tries again by itself."];
    case "revoked": return ["Revoked", "The owner revoked this phone, or paired it again. Scan a new QR code to pair."];
    case "unpaired": return ["Not paired", "On the device's page in NetAdapt Studio, show a pairing QR code and scan it."];
    case "failed": return ["Pairing failed", event.message ?? ""];
    default: return [String(event.state), ""];
  }
}

function load(storage) {
  try {
    const saved = JSON.parse(storage.getItem(STORAGE_KEY) ?? "null");
    return saved && typeof saved.token === "string" ? saved : null;
  } catch {
    return null;
  }
}

async function pair(code, facts) {
  const response = await fetch(PAIR_PATH, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ code, facts }),
    credentials: "omit",
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail ?? `the server answered ${response.status}`);
  return body;
}

async function fetchFiles(path, authorization) {
  const response = await fetch(path, { headers: { Authorization: authorization }, credentials: "omit" });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(`downloading the request's files: ${body.detail ?? response.status}`);
  }
  return response.arrayBuffer();
}

/** Keeps the screen on where the browser can (HTTPS); says so either way. */
async function keepScreenOn(rule) {
  if (!("wakeLock" in navigator)) {
    rule.textContent = "Keep the screen on: this browser cannot keep it on for you here (it can on an https:// address).";
    return;
  }
  const request = async () => {
    try {
      await navigator.wakeLock.request("screen");
      rule.textContent = "The screen stays on while this page is in front.";
    } catch {
      rule.textContent = "Keep the screen on: the browser refused to keep it on.";
    }
  };
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") request(); });
  await request();
}

function main() {
  const $ = (id) => document.getElementById(id);
  const show = (event) => {
    const [state, detail] = describe(event);
    $("phone-state").textContent = state;
    $("phone-state").dataset.state = event.state;
    $("phone-detail").textContent = detail;
    const measuring = event.state === "measuring" && event.asked > 0;
    $("phone-progress").hidden = !measuring;
    if (measuring) {
      $("phone-bar").max = event.asked;
      $("phone-bar").value = event.done;
      $("phone-progress-text").textContent = `${event.done} / ${event.asked} layers`;
    }
  };

  const code = codeOfFragment(location.hash);
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  let saved = load(localStorage);
  let served = 0;
  let backoff = 1000;

  const worker = new Worker(new URL("./measure-worker.mjs", import.meta.url), { type: "module" });
  watchDocument(document, (change) => worker.postMessage({ type: "visibility", ...change }));
  keepScreenOn($("phone-screen-rule"));
  $("phone-forget").addEventListener("click", () => {
    localStorage.removeItem(STORAGE_KEY);
    location.reload();
  });

  const ready = new Promise((resolve) => {
    const listen = ({ data }) => {
      if (data.type !== "ready") return;
      worker.removeEventListener("message", listen);
      resolve(data);
    };
    worker.addEventListener("message", listen);
    worker.postMessage({ type: "init", threads: navigator.hardwareConcurrency || 1 });
  });

  const connect = (facts) => {
    const socket = new WebSocket(websocketUrl(location));
    new PhoneSession({
      socket, worker, token: saved.token, facts, fetchFiles,
      events: (event) => {
        if (event.state === "idle") $("phone-served-count").textContent = String(++served);
        if (event.state === "paired") backoff = 1000;
        if (event.state === "revoked") {
          localStorage.removeItem(STORAGE_KEY);
          $("phone-forget").hidden = true;
        }
        show(event);
        if (event.state === "offline" && event.code !== CLOSE_REVOKED) {
          setTimeout(() => connect(facts), backoff);
          backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
        }
      },
    });
  };

  (async () => {
    const facts = browserFacts(self, await ready);
    const context = !facts.secure_context ? "Plain http page: no screen lock, coarse clock, one thread"
      : facts.cross_origin_isolated ? "Secure, cross-origin isolated page"
      : "Secure page, not cross-origin isolated: one thread, coarse clock";
    $("phone-context").textContent = `${context}; `
      + `ONNX Runtime Web ${facts.onnxruntime_web}, ${facts.backend}, ${facts.threads} thread(s), `
      + `clock resolution ${Number(facts.timer_resolution_ms.toPrecision(2))} ms.`;
    if (code !== null) {
      try {
        const paired = await pair(code, facts);
        saved = { token: paired.token, device: paired.device, name: paired.name };
        localStorage.setItem(STORAGE_KEY, JSON.stringify(saved));
      } catch (error) {
        show({ state: "failed", message: `${error.message}${saved ? " (this phone keeps its earlier pairing)" : ""}` });
        if (!saved) return;
      }
    }
    if (!saved) {
      show({ state: "unpaired" });
      return;
    }
    $("phone-device").textContent = saved.name ?? "";
    $("phone-forget").hidden = false;
    connect(facts);
  })();
}

if (typeof document !== "undefined") main();
