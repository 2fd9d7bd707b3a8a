// Hidden-tab handling: measuring pauses while the page is hidden, and a batch timed across a
// hidden period is discarded and re-timed, never stored.
//
// A hidden tab is throttled (timers slowed, the CPU given to others, the phone perhaps locked),
// so what it times is not the device's speed. The page sees visibilitychange; the timing runs in
// a Web Worker, which only learns of it by message. So the page forwards each change with its
// time (performance.timeOrigin + performance.now(), a clock both contexts share), and the worker
// keeps the hidden periods here and asks, after each batch, whether one overlapped it. Clocks of
// two contexts agree only to about a millisecond, and a message takes a moment: ``marginMs``
// widens every hidden period on both sides (a batch discarded for nothing is only re-timed).
//
// Pure: no DOM here except in watchDocument, which takes the document it watches.

/** Shared clock of page and worker, in ms. */
export function sharedNow() {
  return performance.timeOrigin + performance.now();
}

export class VisibilityLog {
  /** @param {{hidden?: boolean, at?: number, marginMs?: number}} options the state at start */
  constructor({ hidden = false, at = 0, marginMs = 100 } = {}) {
    this.marginMs = marginMs;
    this.periods = [];           // [start, end] of each hidden period; end Infinity while hidden
    this.waiters = [];
    if (hidden) this.periods.push([at, Infinity]);
  }

  get hidden() {
    const last = this.periods[this.periods.length - 1];
    return last !== undefined && last[1] === Infinity;
  }

  /** The page became hidden at ``at`` (ignored when it is hidden already). */
  markHidden(at) {
    if (!this.hidden) this.periods.push([at, Infinity]);
  }

  /** The page became visible at ``at``: the hidden period ends and waiting batches go on. */
  markVisible(at) {
    if (!this.hidden) return;
    this.periods[this.periods.length - 1][1] = at;
    const waiters = this.waiters;
    this.waiters = [];
    for (const resolve of waiters) resolve();
  }

  /** Resolves at once while visible, else when the page is visible again. */
  whenVisible() {
    if (!this.hidden) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Whether [start, end] touches a hidden period (each widened by marginMs). */
  overlapsHidden(start, end) {
    return this.periods.some(([from, to]) => start <= to + this.marginMs && end >= from - this.marginMs);
  }

  /** Drops the hidden periods that ended before ``before`` (no batch that old is still open). */
  forget(before) {
    this.periods = this.periods.filter(([, to]) => to + this.marginMs >= before);
  }
}

/**
 * The guard the batcher takes (batcher.mjs timeInterleaved's ``guard``), over a log fed by
 * messages: ``settle`` yields to the event loop so that a message already posted is handled
 * before the batch is judged.
 */
export function guardOf(log, yieldToEvents = yieldOnce) {
  return {
    whenVisible: () => log.whenVisible(),
    settle: () => yieldToEvents(),
    overlapsHidden: (start, end) => log.overlapsHidden(start, end),
  };
}

/** One turn of the event loop (a message task, which is not clamped as setTimeout is). */
export function yieldOnce() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}

/**
 * Page side: calls ``send({hidden, at})`` now and on every visibilitychange of ``doc``; returns
 * a function that stops watching.
 */
export function watchDocument(doc, send, now = sharedNow) {
  const report = () => send({ hidden: doc.visibilityState === "hidden", at: now() });
  doc.addEventListener("visibilitychange", report);
  report();
  return () => doc.removeEventListener("visibilitychange", report);
}

/** Worker side: applies a message of watchDocument to ``log``. */
export function applyVisibility(log, { hidden, at }) {
  if (hidden) log.markHidden(at);
  else log.markVisible(at);
}
