"""Summary statistics of latency samples, the interleaved timing loop that takes them (with its
retries of noisy entries), and the ONNX Runtime session settings every timing uses.

Latency samples on a shared CPU are skewed (a long right tail from
preemption and cache misses), so the summary keeps robust order
statistics (min, percentiles, median) next to the mean and std.

This file needs numpy only (onnxruntime when sessions are made): the agent program runs it on
devices without torch (it imports this module of the measurement core), so server and agent time and summarise
exactly alike.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class TimingStats:
    """Latency summary in milliseconds of ``n`` individually timed runs."""

    n: int
    min_ms: float
    p10_ms: float
    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "TimingStats":
        """Summarise raw per-run latencies (ms).

        Percentiles use numpy's default linear interpolation; ``std_ms`` is
        the population standard deviation (ddof=0), so one sample gives 0.

        Raises:
            ValueError: if ``samples_ms`` is empty or holds a non-finite value.
        """
        values = np.asarray(samples_ms, dtype=np.float64)
        if values.size == 0:
            raise ValueError("TimingStats.from_samples needs at least one sample")
        if not np.all(np.isfinite(values)):
            raise ValueError("TimingStats.from_samples got a non-finite sample")
        p10, median, p90 = np.percentile(values, [10.0, 50.0, 90.0])
        return cls(
            n=int(values.size),
            min_ms=float(values.min()),
            p10_ms=float(p10),
            median_ms=float(median),
            p90_ms=float(p90),
            mean_ms=float(values.mean()),
            std_ms=float(values.std()),
        )

    @property
    def spread(self) -> float:
        """Relative width ``(p90 - p10) / median``; a noise indicator.

        A zero median with zero width gives 0; with a non-zero width, inf.
        """
        width = self.p90_ms - self.p10_ms
        if self.median_ms > 0:
            return width / self.median_ms
        return 0.0 if width == 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TimingStats":
        """Inverse of :meth:`to_dict`; ValueError on missing or unknown keys."""
        expected = {f.name for f in fields(cls)}
        missing = expected - set(d)
        unknown = set(d) - expected
        if missing or unknown:
            raise ValueError(
                f"TimingStats.from_dict: missing keys {sorted(missing)}, "
                f"unknown keys {sorted(unknown)}"
            )
        return cls(
            n=int(d["n"]),
            **{name: float(d[name]) for name in expected if name != "n"},
        )


def interleaved_samples(runners: Sequence[Callable[[], None]], warmup: int, rounds: int,
                        runs_per_round: int) -> list[list[float]]:
    """Warm up each runner, then time them in interleaved rounds (A B A B ...) with the garbage
    collector off; each runner's per-call times in ms, in the order they were taken.

    No collection is forced first: with the collector off none can interrupt a timed call
    anyway, and in a process holding a large heap (a test session, a worker with networks
    loaded) a full collection is slow: 0.28 s a call in one test's process, 15 s of its 18."""
    samples_ns: list[list[int]] = [[] for _ in runners]
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    try:
        gc.disable()
        for runner in runners:
            for _ in range(warmup):
                runner()
        for _ in range(rounds):
            for runner, samples in zip(runners, samples_ns):
                append = samples.append
                for _ in range(runs_per_round):
                    start = clock()
                    runner()
                    append(clock() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [[ns / 1e6 for ns in samples] for samples in samples_ns]


@dataclass(frozen=True)
class TimedSamples:
    """One runner's statistics and the raw per-call times (ms) they summarise."""

    stats: TimingStats
    samples_ms: list[float]


def timed_with_retries(runners: Sequence[Callable[[], None]], warmup: int, rounds: int,
                       runs_per_round: int, max_spread: float, max_retries: int) -> list[TimedSamples]:
    """:func:`interleaved_samples`, then re-time (interleaved among themselves) the entries whose
    spread exceeds ``max_spread``, up to ``max_retries`` times; for each runner, the attempt with
    the smallest spread, its statistics with the samples they describe."""
    def attempt(group: Sequence[Callable[[], None]]) -> list[TimedSamples]:
        if not group:
            return []
        return [TimedSamples(TimingStats.from_samples(samples), samples)
                for samples in interleaved_samples(group, warmup, rounds, runs_per_round)]

    best = attempt(runners)
    for _ in range(max_retries):
        noisy = [i for i, timed in enumerate(best) if timed.stats.spread > max_spread]
        if not noisy:
            break
        for index, timed in zip(noisy, attempt([runners[i] for i in noisy])):
            if timed.stats.spread < best[index].stats.spread:
                best[index] = timed
    return best


def ort_session_options(threads: int):
    """ONNX Runtime options for timing: sequential, fully optimised, non-spinning, ``threads``
    intra-op threads, errors only in the log."""
    import onnxruntime as ort  # only where sessions are made

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options
