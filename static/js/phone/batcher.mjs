// Timing that survives browser clocks: batches of calls, interleaved rounds, per-call samples.
//
// A browser coarsens performance.now() (100 us in Chromium without cross-origin isolation, 1 ms
// in Safari and Firefox) while a layer takes 10-100 us, so one call cannot be timed on its own as
// the server does (devices/measure/stats.py interleaved_samples). Here each sample is a batch of
// calls long enough for the clock (at least ``factor`` times its resolution: its two readings then
// put it off by at most 2/factor of its length), divided by its number of calls. The rounds are interleaved
// over the entries as the server's are (A B C A B C ...), so drift hits every entry alike; the
// protocol's ``runs_per_round`` calls of an entry are spread over its batches, so an entry costs
// about as many calls as on the server, never fewer than ``minBatchesPerRound`` batches a round.
//
// Pure: the clock, the calls and the hidden-tab guard (visibility.mjs) are injected, so
// tests/js/batcher.test.mjs drives it with a fake clock. Runners may be sync or async (an
// onnxruntime-web session.run returns a promise).

import { spread, timingStats } from "./stats.mjs";

/** Defaults of the options of timeInterleaved / timeWithRetries. */
export const BATCH_DEFAULTS = Object.freeze({
  factor: 100,              // a batch lasts at least factor x the timer's resolution
  minBatchesPerRound: 2,    // samples per entry per round, at least
  maxCallsPerBatch: 1 << 20,
});

/** A guard that never pauses nor discards (a context without a page to watch). */
export const ALWAYS_VISIBLE = Object.freeze({
  whenVisible: async () => {},
  settle: async () => {},
  overlapsHidden: () => false,
});

/**
 * The timer's resolution in ms: the smallest step between distinct readings of ``now`` over
 * ``ticks`` changes. A clock that never moves in ``maxReads`` readings is an error.
 * @param {() => number} now
 */
export function timerResolution(now, { ticks = 30, maxReads = 10_000_000 } = {}) {
  let smallest = Infinity;
  let reads = 0;
  let previous = now();
  for (let seen = 0; seen < ticks;) {
    const current = now();
    if (++reads > maxReads) throw new Error(`the clock did not move in ${maxReads} readings`);
    if (current !== previous) {
      if (current > previous) smallest = Math.min(smallest, current - previous);
      previous = current;
      seen += 1;
    }
  }
  return smallest;
}

/** The shortest batch (ms) the rule allows for a clock of ``resolutionMs``. */
export function minBatchMs(resolutionMs, factor = BATCH_DEFAULTS.factor) {
  if (!(resolutionMs > 0) || !Number.isFinite(resolutionMs)) {
    throw new RangeError(`the timer resolution must be a positive number of ms, got ${resolutionMs}`);
  }
  return factor * resolutionMs;
}

async function runCalls(runner, calls) {
  for (let i = 0; i < calls; i++) await runner();
}

/**
 * Calls per batch for ``runner``: doubled from 1 until a batch lasts ``minMs``, then raised so
 * that the batch would last 1.25 x minMs at the speed seen (a margin for a faster later run).
 */
export async function calibrate(runner, now, minMs, maxCalls = BATCH_DEFAULTS.maxCallsPerBatch) {
  let calls = 1;
  for (;;) {
    const start = now();
    await runCalls(runner, calls);
    const elapsed = now() - start;
    if (elapsed >= minMs) return Math.min(maxCalls, Math.max(calls, Math.ceil((1.25 * calls * minMs) / elapsed)));
    if (calls >= maxCalls) throw new Error(`${maxCalls} calls last under ${minMs} ms: the clock is too coarse`);
    calls = Math.min(maxCalls, calls * 2);
  }
}

/**
 * Warm up each runner, size its batches, then time all of them in interleaved rounds.
 *
 * @param {Array<() => unknown>} runners one inference each
 * @param {{warmup: number, rounds: number, runs_per_round: number}} protocol the server's
 * @param {object} options now (ms clock), resolutionMs, and BATCH_DEFAULTS' fields; guard
 *   (visibility.mjs): batches wait while the tab is hidden, and a batch that overlapped a hidden
 *   period is discarded and re-timed, never kept.
 * @returns {Promise<Array<{samples_ms: number[], calls_per_batch: number, batches_per_round: number,
 *   shortest_batch_ms: number, discarded: number}>>} per runner, its per-call samples (batch ms /
 *   calls) in order, the calls of its last batch, its shortest kept batch and the batches re-timed
 */
export async function timeInterleaved(runners, protocol, options) {
  const { now, resolutionMs, guard = ALWAYS_VISIBLE } = options;
  const settings = { ...BATCH_DEFAULTS, ...options };
  const minMs = minBatchMs(resolutionMs, settings.factor);
  const entries = [];
  for (const runner of runners) {
    await guard.whenVisible();
    await runCalls(runner, protocol.warmup);
    const calls = await calibrate(runner, now, minMs, settings.maxCallsPerBatch);
    const batches = Math.max(settings.minBatchesPerRound, Math.ceil(protocol.runs_per_round / calls));
    entries.push({ runner, calls, batches, spans: [], discarded: 0 });
  }
  for (let round = 0; round < protocol.rounds; round++) {
    for (const entry of entries) {
      for (let b = 0; b < entry.batches; b++) entry.spans.push(await timeBatch(entry, now, minMs, guard, settings));
    }
  }
  // News of a hidden period may arrive after the batch it spoiled was judged: before anything is
  // returned, every kept batch is checked again and re-timed where it overlapped one.
  for (let stale = true; stale;) {
    await guard.settle();
    stale = false;
    for (const entry of entries) {
      for (const [i, span] of entry.spans.entries()) {
        if (!guard.overlapsHidden(span.start, span.end)) continue;
        entry.discarded += 1;
        entry.spans[i] = await timeBatch(entry, now, minMs, guard, settings);
        stale = true;
      }
    }
  }
  return entries.map((e) => ({
    samples_ms: e.spans.map((span) => span.sample),
    calls_per_batch: e.calls,
    batches_per_round: e.batches,
    shortest_batch_ms: Math.min(...e.spans.map((span) => span.end - span.start)),
    discarded: e.discarded,
  }));
}

/**
 * One kept batch of ``entry`` ({sample, start, end}): re-timed while it overlapped a hidden period
 * (after waiting for the page to be visible again) or came out shorter than the rule (the device
 * got faster: the entry's calls per batch are doubled first, up to maxCallsPerBatch).
 */
async function timeBatch(entry, now, minMs, guard, settings) {
  for (;;) {
    await guard.whenVisible();
    const start = now();
    await runCalls(entry.runner, entry.calls);
    const end = now();
    await guard.settle();  // lets news of a hidden period that began during the batch arrive
    const short = end - start < minMs;
    if (!short && !guard.overlapsHidden(start, end)) return { sample: (end - start) / entry.calls, start, end };
    if (short) {
      if (entry.calls >= settings.maxCallsPerBatch) {
        throw new Error(`${entry.calls} calls last under ${minMs} ms: the clock is too coarse`);
      }
      entry.calls = Math.min(settings.maxCallsPerBatch, entry.calls * 2);
    }
    entry.discarded += 1;
  }
}

/**
 * timeInterleaved, then the entries whose spread exceeds ``protocol.max_spread`` re-timed
 * (interleaved among themselves) up to ``protocol.max_retries`` times, keeping for each the
 * attempt with the smallest spread: the server's timed_with_retries, batch by batch.
 * @returns per runner timeInterleaved's fields and the stats of its samples
 */
export async function timeWithRetries(runners, protocol, options) {
  const attempt = async (group) => (await timeInterleaved(group, protocol, options))
    .map((timed) => ({ ...timed, stats: timingStats(timed.samples_ms) }));
  const best = await attempt(runners);
  for (let retry = 0; retry < protocol.max_retries; retry++) {
    const noisy = best.map((timed, i) => i).filter((i) => spread(best[i].stats) > protocol.max_spread);
    if (noisy.length === 0) break;
    const again = await attempt(noisy.map((i) => runners[i]));
    noisy.forEach((index, k) => {
      if (spread(again[k].stats) < spread(best[index].stats)) best[index] = again[k];
    });
  }
  return best;
}

/**
 * Share of an entry's per-call time that is the runtime's own per-call overhead (the time of a
 * model that does nothing, timed the same way); minimums, the most stable statistic.
 */
export function overheadShare(entryStats, overheadStats) {
  return entryStats.min_ms > 0 ? overheadStats.min_ms / entryStats.min_ms : Infinity;
}

/**
 * Whether a layer's entry drowns in per-call overhead: when the overhead is more than
 * ``maxShare`` of it, the layer's own time is a small difference of two noisy numbers, and the
 * caller measures whole networks instead of summing such entries.
 */
export function drownsInOverhead(entryStats, overheadStats, maxShare = 0.5) {
  return overheadShare(entryStats, overheadStats) > maxShare;
}
