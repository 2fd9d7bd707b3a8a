// Summary statistics of latency samples, computed exactly as the server computes them
// (devices/measure/stats.py, TimingStats.from_samples and .spread), so that a phone's table
// entries mean what the server's and the Python agent's mean.
//
// numpy is matched to the last bit, not approximately: percentiles use numpy's "linear" method
// (virtual index (n - 1) * q, and its lerp that computes from the upper neighbour when the
// weight is >= 0.5), and sums use numpy's pairwise summation (8 accumulators, blocks of 128),
// which is what np.mean and np.std do on a contiguous float64 array. tests/js/stats.test.mjs
// checks every field against fixtures written by the Python code (tests/js/make_stats_fixtures.py).

/** The statistics' field names, in the protocol's order (devices/agent/protocol.py STATS_FIELDS). */
export const STATS_FIELDS = ["n", "min_ms", "p10_ms", "median_ms", "p90_ms", "mean_ms", "std_ms"];

const PAIRWISE_BLOCK = 128;

/** numpy's pairwise sum of a Float64Array slice [start, start + n). */
function pairwiseSum(values, start, n) {
  if (n < 8) {
    let sum = -0.0;
    for (let i = start; i < start + n; i++) sum += values[i];
    return sum;
  }
  if (n <= PAIRWISE_BLOCK) {
    const r = Array.from(values.subarray(start, start + 8));
    let i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (let j = 0; j < 8; j++) r[j] += values[start + i + j];
    }
    let sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) sum += values[start + i];
    return sum;
  }
  let half = Math.floor(n / 2);
  half -= half % 8;
  return pairwiseSum(values, start, half) + pairwiseSum(values, start + half, n - half);
}

/** numpy's lerp: a + (b - a) * t, or b - (b - a) * (1 - t) when t >= 0.5. */
function lerp(a, b, t) {
  const diff = b - a;
  return t >= 0.5 ? b - diff * (1 - t) : a + diff * t;
}

/** np.percentile(sorted, q) with the default "linear" method; ``sorted`` ascending. */
export function percentile(sorted, q) {
  const n = sorted.length;
  const virtual = (n - 1) * (q / 100);
  let previous = Math.floor(virtual);
  let next = previous + 1;
  if (virtual >= n - 1) {
    previous = n - 1;
    next = n - 1;
    // numpy takes index -1 for both and a weight of virtual - (-1): the same value either way.
    return lerp(sorted[previous], sorted[next], virtual + 1);
  }
  return lerp(sorted[previous], sorted[next], virtual - previous);
}

/**
 * The summary of per-run latencies (ms): {n, min_ms, p10_ms, median_ms, p90_ms, mean_ms, std_ms}.
 * std is the population standard deviation (one sample gives 0).
 * @param {ArrayLike<number>} samplesMs
 */
export function timingStats(samplesMs) {
  const values = Float64Array.from(samplesMs);
  if (values.length === 0) throw new RangeError("timingStats needs at least one sample");
  if (!values.every(Number.isFinite)) throw new RangeError("timingStats got a non-finite sample");
  const n = values.length;
  const sorted = Float64Array.from(values).sort();
  const mean = pairwiseSum(values, 0, n) / n;
  const squares = values.map((value) => (value - mean) * (value - mean));
  return {
    n,
    min_ms: sorted[0],
    p10_ms: percentile(sorted, 10),
    median_ms: percentile(sorted, 50),
    p90_ms: percentile(sorted, 90),
    mean_ms: mean,
    std_ms: Math.sqrt(pairwiseSum(squares, 0, n) / n),
  };
}

/** Relative width (p90 - p10) / median, the server's noise indicator (TimingStats.spread). */
export function spread(stats) {
  const width = stats.p90_ms - stats.p10_ms;
  if (stats.median_ms > 0) return width / stats.median_ms;
  return width === 0 ? 0 : Infinity;
}

/**
 * At most ``limit`` samples spread evenly over the run, rounded to the nanosecond: what the
 * protocol's kept_samples keeps of a network's per-run times (devices/agent/protocol.py).
 */
export function keptSamples(samplesMs, limit = 1000) {
  let kept = Array.from(samplesMs);
  if (kept.length > limit) {
    kept = Array.from({ length: limit }, (_, i) => kept[Math.floor((i * kept.length) / limit)]);
  }
  return kept.map(round6);
}

/**
 * Python's round(value, 6): toFixed rounds the exact binary value as Python does, and a tie
 * cannot occur (a decimal ending in 5 at the seventh place is never a binary fraction).
 */
function round6(value) {
  return Number(value.toFixed(6));
}
