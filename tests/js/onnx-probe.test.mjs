// The overhead probe's bytes (tests/test_phone_js.py checks them with onnx and ONNX Runtime).
import assert from "node:assert/strict";
import { test } from "node:test";

import { identityModel } from "../../static/js/phone/onnx-probe.mjs";

test("the probe names its node, its graph and every dimension of its shape", () => {
  const text = new TextDecoder("latin1").decode(identityModel([1, 300, 7, 7]));
  for (const part of ["Identity", "overhead_probe", "netadapt-browser"]) assert.ok(text.includes(part), part);
  // 300 is a two-byte varint (0xac 0x02) inside each of the two value infos.
  const bytes = [...identityModel([1, 300, 7, 7])];
  const twoByte = bytes.filter((b, i) => b === 0xac && bytes[i + 1] === 0x02).length;
  assert.equal(twoByte, 2);
});

test("a shape must be a list of positive sizes", () => {
  for (const bad of [[], [0], [1.5], "1,2", null, [-1]]) assert.throws(() => identityModel(bad), RangeError);
});
