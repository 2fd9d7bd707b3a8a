// The phone page's pure parts: the pairing code of the URL's fragment and the state texts.
import assert from "node:assert/strict";
import { test } from "node:test";

import { codeOfFragment, describe } from "../../static/js/phone/page.mjs";

test("the code comes from #pair= only", () => {
  assert.equal(codeOfFragment("#pair=ABCDE-FGHJK"), "ABCDE-FGHJK");
  for (const hash of ["", "#", "#pair=", "#code=ABCDE", "#pair=AB<script>", "#pair=ABCDE&x=1", null, undefined]) {
    assert.equal(codeOfFragment(hash), null, String(hash));
  }
});

test("every state has plain words, and measuring says how far it is", () => {
  for (const state of ["connecting", "paired", "idle", "offline", "revoked", "unpaired", "failed"]) {
    const [line, detail] = describe({ state, name: "Pixel", message: "expired" });
    assert.ok(line.length > 3 && !line.includes("undefined") && !detail.includes("undefined"), state);
  }
  const [line, detail] = describe({ state: "measuring", request: 7, done: 16, asked: 20, drowned: 0 });
  assert.equal(line, "Measuring");
  assert.equal(detail, "Request 7: 16 of 20 layers timed.");
});
