// The browser's statistics against the server's: every fixture case (written by
// tests/js/make_stats_fixtures.py from devices.measure.stats) must come out identical, bit for bit.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { STATS_FIELDS, keptSamples, spread, timingStats } from "../../static/js/phone/stats.mjs";

const fixtures = JSON.parse(readFileSync(new URL("./fixtures/stats.json", import.meta.url), "utf-8"));

test("the fixtures cover the edge cases", () => {
  const names = fixtures.stats.map((c) => c.name);
  for (const name of ["one sample", "all tied", "outliers in a long right tail", "lognormal n=4097"]) {
    assert.ok(names.includes(name), name);
  }
});

for (const fixture of fixtures.stats) {
  test(`stats equal the server's: ${fixture.name}`, () => {
    const stats = timingStats(fixture.samples_ms);
    assert.deepEqual(Object.keys(stats), STATS_FIELDS);
    for (const field of STATS_FIELDS) {
      assert.equal(stats[field], fixture.stats[field], `${field} of ${fixture.name}`);
    }
    const expected = fixture.spread === "Infinity" ? Infinity : fixture.spread;
    assert.equal(spread(stats), expected);
  });
}

for (const [i, fixture] of fixtures.kept_samples.entries()) {
  test(`kept samples equal the protocol's (${i}: ${fixture.samples_ms.length} of limit ${fixture.limit})`, () => {
    assert.deepEqual(keptSamples(fixture.samples_ms, fixture.limit), fixture.kept);
  });
}

test("no samples or a non-finite one is refused, as in Python", () => {
  assert.throws(() => timingStats([]), RangeError);
  assert.throws(() => timingStats([1, NaN]), RangeError);
  assert.throws(() => timingStats([1, Infinity]), RangeError);
});

test("the input is not reordered", () => {
  const samples = [3, 1, 2];
  timingStats(samples);
  assert.deepEqual(samples, [3, 1, 2]);
});
