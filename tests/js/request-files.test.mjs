// A request's zip read as the Python agent reads it (devices/agent/client.py read_manifest).
import assert from "node:assert/strict";
import { test } from "node:test";

import { strToU8, unzipSync, zipSync } from "fflate";

import { RequestFilesError, readRequestFiles } from "../../static/js/phone/request-files.mjs";

const model = new Uint8Array([8, 7]);
const zipOf = (manifest, files = { "layer-0.onnx": model, "net-0.onnx": model }) =>
  zipSync({ "manifest.json": strToU8(JSON.stringify(manifest)), ...files });
const MANIFEST = {
  request: 5,
  layers: [{ index: 3, file: "layer-0.onnx", input_shape: [1, 8, 16, 16] }],
  networks: [{ index: 0, file: "net-0.onnx", input_shape: [1, 3, 32, 32], label: "original" }],
};

test("the layers and networks come with their bytes and shapes", () => {
  const { layers, networks } = readRequestFiles(zipOf(MANIFEST), 5, unzipSync);
  assert.deepEqual(layers.map((l) => [l.index, l.input_shape, l.bytes]), [[3, [1, 8, 16, 16], model]]);
  assert.deepEqual(networks.map((n) => [n.index, n.label]), [[0, "original"]]);
});

test("a zip that is not this request's, or names a missing file, or is no zip, is refused", () => {
  const cases = [
    [zipOf(MANIFEST), 6, /not the one of request 6/],
    [zipOf({ ...MANIFEST, layers: [{ index: 0, file: "missing.onnx", input_shape: [1] }] }), 5, /does not hold/],
    [zipOf({ ...MANIFEST, layers: [{ index: -1, file: "layer-0.onnx", input_shape: [1] }] }), 5, /index/],
    [zipOf({ ...MANIFEST, layers: [{ index: 0, file: "layer-0.onnx", input_shape: [0] }] }), 5, /input_shape/],
    [zipOf({ ...MANIFEST, networks: [{ ...MANIFEST.networks[0], index: 1 }] }), 5, /numbered 0, 1/],
    [zipSync({ "layer-0.onnx": model }), 5, /manifest.json/],
    [new Uint8Array([1, 2, 3]), 5, /not a zip/],
  ];
  for (const [zip, request, message] of cases) {
    assert.throws(() => readRequestFiles(zip, request, unzipSync), (error) => error instanceof RequestFilesError && message.test(error.message));
  }
});
