"""The timing protocol: warm-up, interleaved rounds, per-call timing, retries.

Runners are timed in interleaved rounds (A B C A B C ...) rather than one
after the other, so slow drift of the machine (thermal state, frequency
scaling, background load) hits every runner alike and relative latencies
stay comparable. Each call is timed on its own with ``perf_counter_ns``
and the garbage collector is off while timing, so a collection pause
cannot land inside one runner's samples.

Pure (numpy through ``stats``; no torch): the agent program and the engine import it freely.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from devices.measure.stats import TimedSamples, TimingStats, interleaved_samples, timed_with_retries


@dataclass(frozen=True)
class MeasureProtocol:
    """How many runs to warm up, time and retry; see the module docstring."""

    threads: int = 1
    warmup: int = 10          # runs before timing, per runner
    rounds: int = 5           # interleaved rounds (A B C A B C ...)
    runs_per_round: int = 40  # timed calls per runner per round
    max_spread: float = 0.5   # entries with (p90-p10)/median above this are re-measured
    max_retries: int = 2

    def __post_init__(self) -> None:
        """Reject settings that would time nothing or loop forever."""
        minimums = {"threads": 1, "warmup": 0, "rounds": 1, "runs_per_round": 1, "max_retries": 0}
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise ValueError(f"MeasureProtocol.{name} must be >= {minimum}, got {getattr(self, name)}")
        if not self.max_spread > 0:
            raise ValueError(f"MeasureProtocol.max_spread must be > 0, got {self.max_spread}")


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Torch's thread count set for the window, restored afterwards, also on error.

    Only a process that has loaded torch can run a torch runner, so without torch there is
    nothing to set (and this module stays importable without it).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)


def sample_interleaved(runners: Sequence[Callable[[], None]], protocol: MeasureProtocol) -> list[list[float]]:
    """Warm up each runner, then time them in interleaved rounds; each runner's per-call times (ms).

    Each list holds ``protocol.rounds * protocol.runs_per_round`` samples, in the order they were
    taken (round by round). The loop is ``stats.interleaved_samples``, the agent's too.
    """
    if not runners:
        return []
    with _torch_threads(protocol.threads):
        return interleaved_samples(runners, protocol.warmup, protocol.rounds, protocol.runs_per_round)


def time_interleaved(runners: Sequence[Callable[[], None]], protocol: MeasureProtocol) -> list[TimingStats]:
    """Warm up each runner, then time them in interleaved rounds; one TimingStats per runner.

    Each stats has ``n == protocol.rounds * protocol.runs_per_round``.
    """
    return [TimingStats.from_samples(samples) for samples in sample_interleaved(runners, protocol)]


def time_with_retries_and_samples(runners: Sequence[Callable[[], None]],
                                  protocol: MeasureProtocol) -> list[TimedSamples]:
    """:func:`time_with_retries` that also keeps, for each runner, the samples of the attempt whose
    statistics it returns (a histogram then shows exactly what the statistics describe)."""
    if not runners:
        return []
    with _torch_threads(protocol.threads):
        return timed_with_retries(runners, protocol.warmup, protocol.rounds, protocol.runs_per_round,
                                  protocol.max_spread, protocol.max_retries)


def time_with_retries(runners: Sequence[Callable[[], None]], protocol: MeasureProtocol) -> list[TimingStats]:
    """:func:`time_interleaved`, then re-time entries whose spread exceeds ``max_spread``.

    Noisy entries are re-timed together (interleaved among themselves) up
    to ``max_retries`` times; for each, the attempt with the smallest
    spread is kept.
    """
    return [timed.stats for timed in time_with_retries_and_samples(runners, protocol)]
