// The timing batcher under a fake clock: resolution, batch sizes, interleaving, hidden periods.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  calibrate, drownsInOverhead, minBatchMs, overheadShare, timeInterleaved, timeWithRetries, timerResolution,
} from "../../static/js/phone/batcher.mjs";
import { spread, timingStats } from "../../static/js/phone/stats.mjs";
import { VisibilityLog, guardOf } from "../../static/js/phone/visibility.mjs";
import { fakeClock, fakeRunner } from "./fake-clock.mjs";

const PROTOCOL = { warmup: 3, rounds: 5, runs_per_round: 40, max_spread: 0.5, max_retries: 2 };
const close = (actual, expected, relative, what) =>
  assert.ok(Math.abs(actual - expected) <= relative * expected, `${what}: ${actual} is not within ${relative} of ${expected}`);

test("the timer resolution is the clock's smallest step", () => {
  for (const resolution of [0.005, 0.1, 1]) close(timerResolution(fakeClock(resolution).now), resolution, 1e-6, `${resolution} ms`);
});

test("a clock that never moves is an error, not a hang", () => {
  assert.throws(() => timerResolution(() => 5, { maxReads: 1000 }), /did not move/);
});

test("the shortest batch is factor x resolution; a resolution must be positive", () => {
  assert.equal(minBatchMs(0.1, 100), 10);
  for (const bad of [0, -1, NaN, Infinity]) assert.throws(() => minBatchMs(bad), RangeError);
});

test("calibration doubles until a batch lasts the minimum, with a margin", async () => {
  const clock = fakeClock(0.1);
  const calls = await calibrate(fakeRunner(clock, "a", 0.01), clock.now, 10);
  assert.ok(calls * 0.01 >= 10 * 1.2, `${calls} calls of 0.01 ms`);
  assert.ok(calls * 0.01 <= 10 * 2.6, `${calls} calls of 0.01 ms: far more than needed`);
});

test("a clock too coarse for the largest batch allowed is an error, not an endless loop", async () => {
  const clock = fakeClock(1);
  await assert.rejects(calibrate(fakeRunner(clock, "a", 0.001), clock.now, 100, 64), /too coarse/);
});

test("batches of a 10 us layer under a 100 us clock give per-call samples within 1%", async () => {
  const clock = fakeClock(0.1);
  const [timed] = await timeInterleaved([fakeRunner(clock, "a", 0.01)], PROTOCOL, { now: clock.now, resolutionMs: 0.1 });
  assert.ok(timed.shortest_batch_ms >= minBatchMs(0.1), `a kept batch of ${timed.shortest_batch_ms} ms`);
  assert.equal(timed.batches_per_round, 2); // 40 runs a round are fewer calls than one batch
  assert.equal(timed.samples_ms.length, PROTOCOL.rounds * 2);
  for (const sample of timed.samples_ms) close(sample, 0.01, 0.01, "sample");
  const stats = timingStats(timed.samples_ms);
  assert.ok(stats.min_ms <= stats.p10_ms && stats.p10_ms <= stats.median_ms);
});

test("a slow layer is timed call by call, as many runs as on the server", async () => {
  const clock = fakeClock(0.1);
  const [timed] = await timeInterleaved([fakeRunner(clock, "a", 20)], PROTOCOL, { now: clock.now, resolutionMs: 0.1 });
  assert.equal(timed.calls_per_batch, 1);
  assert.equal(timed.samples_ms.length, PROTOCOL.rounds * PROTOCOL.runs_per_round);
  for (const sample of timed.samples_ms) close(sample, 20, 0.001, "sample");
});

test("rounds are interleaved over the entries (A B C A B C ...)", async () => {
  const clock = fakeClock(0.1);
  const log = [];
  const runners = ["A", "B", "C"].map((name, i) => fakeRunner(clock, name, 0.05 * (i + 1), log));
  await timeInterleaved(runners, PROTOCOL, { now: clock.now, resolutionMs: 0.1 });
  const runs = log.filter((name, i) => name !== log[i - 1]); // one letter per run of calls
  const expected = Array.from({ length: PROTOCOL.rounds + 1 }, () => ["A", "B", "C"]).flat(); // warm-up, then rounds
  assert.deepEqual(runs, expected);
});

test("a batch that comes out shorter than the rule is re-timed with more calls", async () => {
  const clock = fakeClock(0.1);
  let calls = 0;
  // 0.04 ms a call while calibrating (511 calls: 1 + 2 + ... + 256), 4x faster afterwards.
  const runner = fakeRunner(clock, "a", () => (++calls <= 511 ? 0.04 : 0.01));
  const [timed] = await timeInterleaved([runner], { ...PROTOCOL, warmup: 0 }, { now: clock.now, resolutionMs: 0.1 });
  assert.ok(timed.discarded >= 1);
  assert.ok(timed.shortest_batch_ms >= minBatchMs(0.1), `a kept batch of ${timed.shortest_batch_ms} ms`);
  for (const sample of timed.samples_ms) close(sample, 0.01, 0.02, "sample");
});

test("a batch overlapping a hidden period is re-timed, never kept", async () => {
  const clock = fakeClock(0.1);
  const log = new VisibilityLog({ marginMs: 0 });
  let calls = 0;
  // At the 3000th call the tab is hidden for a while: a throttled call takes 500 ms.
  const runner = fakeRunner(clock, "a", () => {
    calls += 1;
    if (calls === 3000) {
      log.markHidden(clock.now());
      clock.advance(500);
      log.markVisible(clock.now());
    }
    return 0.01;
  });
  const [timed] = await timeInterleaved([runner], PROTOCOL, { now: clock.now, resolutionMs: 0.1, guard: guardOf(log, async () => {}) });
  assert.equal(timed.discarded, 1);
  assert.equal(timed.samples_ms.length, PROTOCOL.rounds * timed.batches_per_round);
  for (const sample of timed.samples_ms) close(sample, 0.01, 0.01, "sample");
});

test("news of a hidden period that arrives late still discards the batch it spoiled", async () => {
  const clock = fakeClock(0.1);
  const log = new VisibilityLog({ marginMs: 0 });
  const pending = [];
  let calls = 0;
  let settles = 0;
  const runner = fakeRunner(clock, "a", () => {
    calls += 1;
    if (calls === 3000) { // the page saw it; the worker hears of it only much later
      pending.push([true, clock.now()]);
      clock.advance(500);
      pending.push([false, clock.now()]);
    }
    return 0.01;
  });
  const deliverLate = async () => {
    settles += 1;
    if (settles <= 10) return; // only at the check after the last of the 10 batches was judged
    for (const [hidden, at] of pending.splice(0)) hidden ? log.markHidden(at) : log.markVisible(at);
  };
  const [timed] = await timeInterleaved([runner], PROTOCOL, { now: clock.now, resolutionMs: 0.1, guard: guardOf(log, deliverLate) });
  assert.equal(timed.discarded, 1);
  for (const sample of timed.samples_ms) close(sample, 0.01, 0.01, "sample");
});

test("nothing is timed while the tab is hidden; timing goes on once it is visible", async () => {
  const clock = fakeClock(0.1);
  const log = new VisibilityLog({ hidden: true, at: clock.now(), marginMs: 0 });
  const runner = fakeRunner(clock, "a", 0.05);
  const result = timeInterleaved([runner], PROTOCOL, { now: clock.now, resolutionMs: 0.1, guard: guardOf(log, async () => {}) });
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(runner.log.length, 0);
  log.markVisible(clock.now());
  const [timed] = await result;
  assert.ok(runner.log.length > 0);
  assert.equal(timed.discarded, 0);
});

test("noisy entries are re-timed and the attempt with the smallest spread is kept", async () => {
  const log = [];
  const clock = fakeClock(0.1);
  // For the first 400 ms, "noisy" is 20x slower one 25 ms window in three (spread about 1 over its
  // batches); the first attempt takes about 450 ms, so its retry is calm.
  const stormy = () => (clock.trueMs < 1400 && Math.floor(clock.trueMs / 25) % 3 === 1 ? 1 : 0.05);
  const noisy = fakeRunner(clock, "noisy", stormy, log);
  const calm = fakeRunner(clock, "calm", 0.05, log);
  const once = await timeWithRetries([noisy, calm], { ...PROTOCOL, max_retries: 0 }, { now: clock.now, resolutionMs: 0.1 });
  assert.ok(spread(once[0].stats) > PROTOCOL.max_spread, "without retries the storm shows");

  log.length = 0;
  const fresh = fakeClock(0.1);
  const stormyAgain = () => (fresh.trueMs < 1400 && Math.floor(fresh.trueMs / 25) % 3 === 1 ? 1 : 0.05);
  const [n, c] = await timeWithRetries([fakeRunner(fresh, "noisy", stormyAgain, log), fakeRunner(fresh, "calm", 0.05, log)],
                                       PROTOCOL, { now: fresh.now, resolutionMs: 0.1 });
  assert.ok(spread(n.stats) <= PROTOCOL.max_spread, `spread ${spread(n.stats)}`);
  close(n.stats.median_ms, 0.05, 0.02, "the kept attempt's median");
  close(c.stats.median_ms, 0.05, 0.02, "the calm entry's median");
  const callsOf = (name) => log.filter((entry) => entry === name).length;
  assert.ok(callsOf("noisy") > 1.5 * callsOf("calm"), "the noisy entry was re-timed, the calm one was not");
});

test("an entry drowns when the runtime's per-call overhead is more than half of it", () => {
  const overhead = timingStats([0.1, 0.11]);
  assert.equal(drownsInOverhead(timingStats([0.15, 0.16]), overhead), true);
  assert.equal(drownsInOverhead(timingStats([0.5, 0.6]), overhead), false);
  close(overheadShare(timingStats([0.4]), overhead), 0.25, 1e-12, "share");
  assert.equal(drownsInOverhead(timingStats([0.15]), overhead, 0.9), false);
});
