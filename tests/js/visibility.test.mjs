// Hidden-tab handling: the log of hidden periods, the pause, and the page's watcher.
import assert from "node:assert/strict";
import { test } from "node:test";

import { VisibilityLog, applyVisibility, guardOf, watchDocument, yieldOnce } from "../../static/js/phone/visibility.mjs";

test("a batch overlaps a hidden period, widened by the margin, and nothing else", () => {
  const log = new VisibilityLog({ marginMs: 10 });
  log.markHidden(1000);
  log.markVisible(2000);
  assert.equal(log.overlapsHidden(1500, 1600), true);   // inside
  assert.equal(log.overlapsHidden(900, 1001), true);    // across the start
  assert.equal(log.overlapsHidden(1999, 2500), true);   // across the end
  assert.equal(log.overlapsHidden(2005, 2500), true);   // within the margin after it
  assert.equal(log.overlapsHidden(2011, 2500), false);  // after it
  assert.equal(log.overlapsHidden(500, 989), false);    // before it
});

test("a period still hidden overlaps every later batch", () => {
  const log = new VisibilityLog({ marginMs: 0 });
  log.markHidden(1000);
  assert.equal(log.hidden, true);
  assert.equal(log.overlapsHidden(5000, 6000), true);
});

test("repeated marks keep one period; visible while visible is nothing", () => {
  const log = new VisibilityLog({ marginMs: 0 });
  log.markVisible(10);
  log.markHidden(100);
  log.markHidden(200);
  log.markVisible(300);
  log.markVisible(400);
  assert.deepEqual(log.periods, [[100, 300]]);
  assert.equal(log.overlapsHidden(301, 450), false);
});

test("whenVisible waits while hidden and resolves when visible", async () => {
  const log = new VisibilityLog({ hidden: true, at: 0 });
  let resumed = false;
  const waiting = log.whenVisible().then(() => { resumed = true; });
  await yieldOnce();
  assert.equal(resumed, false);
  log.markVisible(50);
  await waiting;
  assert.equal(resumed, true);
  await log.whenVisible(); // at once while visible
});

test("forget drops only periods that ended long enough ago", () => {
  const log = new VisibilityLog({ marginMs: 10 });
  log.markHidden(0); log.markVisible(100);
  log.markHidden(200); log.markVisible(300);
  log.forget(250);
  assert.deepEqual(log.periods, [[200, 300]]);
});

test("the page's watcher reports the state at once and on every change, until stopped", () => {
  const doc = new EventTarget();
  doc.visibilityState = "visible";
  const sent = [];
  let clock = 0;
  const stop = watchDocument(doc, (message) => sent.push(message), () => ++clock);
  doc.visibilityState = "hidden";
  doc.dispatchEvent(new Event("visibilitychange"));
  doc.visibilityState = "visible";
  doc.dispatchEvent(new Event("visibilitychange"));
  stop();
  doc.dispatchEvent(new Event("visibilitychange"));
  assert.deepEqual(sent, [{ hidden: false, at: 1 }, { hidden: true, at: 2 }, { hidden: false, at: 3 }]);

  const log = new VisibilityLog({ marginMs: 0 });
  for (const message of sent) applyVisibility(log, message);
  assert.deepEqual(log.periods, [[2, 3]]);
});

test("the guard pauses and judges by the log; settle resolves", async () => {
  const log = new VisibilityLog({ marginMs: 0 });
  const guard = guardOf(log);
  await guard.settle(); // resolves after a turn of the event loop
  log.markHidden(7);
  let resumed = false;
  const waiting = guard.whenVisible().then(() => { resumed = true; });
  await guard.settle();
  assert.equal(resumed, false);
  log.markVisible(9);
  await waiting;
  assert.equal(guard.overlapsHidden(5, 8), true);
  assert.equal(guard.overlapsHidden(1, 6), false);
  assert.equal(guard.overlapsHidden(10, 12), false);
});
