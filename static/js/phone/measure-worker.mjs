// The phone's timing thread: a module Web Worker that runs ONNX models with onnxruntime-web
// (WebAssembly backend) and times them with the batcher, so the page's own thread stays free
// (a long task on it would freeze the screen and delay the websocket's heartbeats).
//
// Messages in (one request at a time; visibility at any time):
//   init {threads}                      -> ready {ort_version, backend, threads, resolution_ms, ...}
//   visibility {hidden, at}             (the page's watchDocument; see visibility.mjs)
//   open {id, request, zip}             -> opened {id, layers: [index], networks: [label]}
//                                          (the request's zip, read once with fflate and kept)
//   time {id, models: [{index, bytes, input_shape, label}], protocol, probe?, samples?}
//   time-zip {id, request, part: "layers" | "networks", indices?, protocol, probe?, samples?}
//                                       -> timed {id, resolution_ms, factor, results, probes}
//   any of the three may answer failed {id, message}
// ``probe``: an overhead probe (onnx-probe.mjs, a copy of the input) per input shape is timed
// interleaved with the entries; its time is the runtime's per-call overhead for such an input,
// and each entry says what share of its time that is and whether it drowns in it
// (batcher.mjs drownsInOverhead): such entries are better left to whole-network measurement.
// Threads: what the context allows, 1 without cross-origin isolation (no SharedArrayBuffer);
// onnxruntime-web fixes them when its WebAssembly starts, so the first init decides.

import * as ort from "../../vendor/onnxruntime-web/ort.wasm.min.mjs";
import { unzipSync } from "../../vendor/fflate/browser.js";

import { BATCH_DEFAULTS, drownsInOverhead, overheadShare, timeWithRetries, timerResolution } from "./batcher.mjs";
import { identityModel } from "./onnx-probe.mjs";
import { readRequestFiles } from "./request-files.mjs";
import { keptSamples } from "./stats.mjs";
import { VisibilityLog, applyVisibility, guardOf } from "./visibility.mjs";

const BACKEND = "wasm";
const INPUT_SEED = 1;
const visibility = new VisibilityLog();
const guard = guardOf(visibility);
let resolutionMs = null;
let busy = false;

/** Deterministic standard-normal-ish input values (the server seeds its inputs too). */
function seededInput(shape, seed = INPUT_SEED) {
  const size = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(size);
  let state = seed >>> 0;
  const uniform = () => {  // mulberry32
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 1) / 4294967297;
  };
  for (let i = 0; i < size; i++) data[i] = Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  return new ort.Tensor("float32", data, shape);
}

async function init({ threads = 1 }) {
  const isolated = self.crossOriginIsolated === true;
  if (resolutionMs === null) {
    ort.env.wasm.numThreads = isolated ? Math.max(1, Math.min(threads, navigator.hardwareConcurrency || 1)) : 1;
    ort.env.wasm.proxy = false;  // this worker is the proxy
    resolutionMs = timerResolution(() => performance.now());
  }
  return {
    type: "ready", ort_version: ort.env.versions.web, backend: BACKEND, threads: ort.env.wasm.numThreads,
    resolution_ms: resolutionMs, cross_origin_isolated: isolated, secure_context: self.isSecureContext === true,
  };
}

async function session(bytes, shape) {
  const created = await ort.InferenceSession.create(bytes, {
    executionProviders: [BACKEND], graphOptimizationLevel: "all", executionMode: "sequential",
  });
  if (created.inputNames.length !== 1) {
    await created.release();
    throw new Error(`an ONNX model to time must have exactly one input, this one has ${created.inputNames.length}`);
  }
  const feeds = { [created.inputNames[0]]: seededInput(shape) };
  const runner = () => created.run(feeds);
  await runner();  // fails here, not in the timing loop, when the shape does not fit the model
  return { created, runner };
}

async function time({ id, models, protocol, probe = false, samples = false }) {
  const shapes = probe ? [...new Set(models.map((m) => JSON.stringify(m.input_shape)))] : [];
  const loaded = [];
  try {
    for (const model of models) loaded.push(await session(model.bytes, model.input_shape));
    for (const shape of shapes) loaded.push(await session(identityModel(JSON.parse(shape)), JSON.parse(shape)));
    const timed = await timeWithRetries(loaded.map((l) => l.runner), protocol,
                                        { now: () => performance.timeOrigin + performance.now(), resolutionMs, guard });
    const probes = Object.fromEntries(shapes.map((shape, i) => [shape, timed[models.length + i].stats]));
    visibility.forget(performance.timeOrigin + performance.now());
    const results = models.map((model, i) => {
      const t = timed[i];
      const result = {
        index: model.index, label: model.label ?? "", stats: t.stats, calls_per_batch: t.calls_per_batch,
        batches_per_round: t.batches_per_round, shortest_batch_ms: t.shortest_batch_ms, discarded: t.discarded,
      };
      if (samples) result.samples_ms = keptSamples(t.samples_ms);
      const overhead = probes[JSON.stringify(model.input_shape)];
      if (overhead) {
        result.overhead_ms = overhead.min_ms;
        result.overhead_share = overheadShare(t.stats, overhead);
        result.drowns = drownsInOverhead(t.stats, overhead);
      }
      return result;
    });
    return { type: "timed", id, resolution_ms: resolutionMs, factor: BATCH_DEFAULTS.factor, results, probes };
  } finally {
    for (const { created } of loaded) await created.release();
  }
}

let opened = null;  // {request, layers, networks} of the last zip opened

function open({ id, request, zip }) {
  opened = { request, ...readRequestFiles(new Uint8Array(zip), request, unzipSync) };
  return { type: "opened", id, layers: opened.layers.map((l) => l.index), networks: opened.networks.map((n) => n.label) };
}

function modelsOfZip({ request, part, indices = null }) {
  if (opened === null || opened.request !== request) throw new Error(`the files of request ${request} are not open`);
  const entries = part === "networks" ? opened.networks : opened.layers;
  return indices === null ? entries : entries.filter((entry) => indices.includes(entry.index));
}

self.onmessage = async ({ data }) => {
  if (data.type === "visibility") {
    applyVisibility(visibility, data);
    return;
  }
  if (data.type === "init") {
    self.postMessage(await init(data));
    return;
  }
  if (data.type === "open") {
    try {
      self.postMessage(open(data));
    } catch (error) {
      self.postMessage({ type: "failed", id: data.id, message: error.message });
    }
    return;
  }
  if (data.type !== "time" && data.type !== "time-zip") return;
  if (busy) {
    self.postMessage({ type: "failed", id: data.id, message: "the worker is timing another request" });
    return;
  }
  busy = true;
  try {
    if (resolutionMs === null) await init({});
    const models = data.type === "time-zip" ? modelsOfZip(data) : data.models;
    self.postMessage(await time({ ...data, models }));
  } catch (error) {
    self.postMessage({ type: "failed", id: data.id, message: `${error?.name ?? "Error"}: ${error?.message ?? error}` });
  } finally {
    busy = false;
  }
};
