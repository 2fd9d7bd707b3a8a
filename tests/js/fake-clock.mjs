// A clock for the batcher's tests: true time advances only when a call "runs" (and by a hair at
// each reading, as a real clock would); readings are coarsened to ``resolutionMs``, as browsers do.
// ``jitter(trueMs)`` is added to a reading (a preempted thread reads the clock late).
export function fakeClock(resolutionMs, jitter = () => 0) {
  let trueMs = 1000;
  return {
    now: () => {
      trueMs += 1e-4;
      return Math.floor(trueMs / resolutionMs) * resolutionMs + jitter(trueMs);
    },
    advance: (ms) => {
      trueMs += ms;
    },
    get trueMs() {
      return trueMs;
    },
  };
}

/** A runner that takes ``costMs()`` of the clock's time per call and logs its name. */
export function fakeRunner(clock, name, costMs, log = []) {
  const cost = typeof costMs === "function" ? costMs : () => costMs;
  const runner = () => {
    log.push(name);
    clock.advance(cost());
  };
  runner.log = log;
  return runner;
}
