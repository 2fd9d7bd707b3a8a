"""Timing ONNX models with ONNX Runtime on the device, under the server's timing protocol.

The protocol is the one the server's own CPU uses (devices/measure/protocol.py, sent with each
request): warm-up runs per model, then interleaved rounds (A B C A B C ...) so that drift of the
device (heat, frequency scaling, background apps) hits every model alike; every call timed on
its own with ``perf_counter_ns`` while the garbage collector is off; entries whose spread
(p90 - p10) / median is above ``max_spread`` re-timed (interleaved among themselves), keeping
the attempt with the smallest spread (and, for whole networks the server wants a histogram of,
that attempt's raw per-call times). Sessions get the server's options (fixed intra-op threads,
sequential, all graph optimisations, no spinning: an idle pool that spins would steal cores from
the session timed next) and the same seeded random input.

The loop, its retries, the statistics and the session options are the server's own
devices/measure/stats.py, imported from the measurement core (which imports no torch);
tests/test_agent_protocol.py checks that the protocol defaults agree.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from devices.agent.protocol import PROTOCOL_FIELDS, ProtocolError, integer
from devices.measure.stats import (TimedSamples, TimingStats, interleaved_samples, ort_session_options,
                                   timed_with_retries)

INPUT_SEED = 1  # the seed of the server's runners' input (devices/measure/runtimes.py)
MAX_THREADS = 256

Runner = Callable[[], None]


@dataclass(frozen=True)
class TimingProtocol:
    """How many runs to warm up, time and retry (the server's MeasureProtocol, field by field)."""

    threads: int = 1
    warmup: int = 10
    rounds: int = 5
    runs_per_round: int = 40
    max_spread: float = 0.5
    max_retries: int = 2

    def __post_init__(self) -> None:
        limits = {"threads": (1, MAX_THREADS), "warmup": (0, 100_000), "rounds": (1, 10_000),
                  "runs_per_round": (1, 100_000), "max_retries": (0, 100)}
        for name, (low, high) in limits.items():
            integer(getattr(self, name), f"protocol.{name}", low, high)
        spread = self.max_spread
        if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not spread > 0:
            raise ProtocolError(f"protocol.max_spread must be a number > 0, got {spread!r}")

    @classmethod
    def from_message(cls, threads: Any, protocol: Mapping[str, Any] | None) -> "TimingProtocol":
        """The protocol of a ``request`` message; fields it leaves out keep their defaults."""
        protocol = dict(protocol or {})
        unknown = set(protocol) - set(PROTOCOL_FIELDS)
        if unknown:
            raise ProtocolError(f"unknown timing protocol fields {sorted(unknown)}")
        values = {"threads": integer(threads, "threads", 1, MAX_THREADS)}
        for field in fields(cls):
            if field.name in protocol:
                value = protocol[field.name]
                values[field.name] = value if field.name == "max_spread" else integer(value, field.name)
        return cls(**values)

    @property
    def runs(self) -> int:
        """Timed runs behind each statistic."""
        return self.rounds * self.runs_per_round


def load_runner(onnx_bytes: bytes, input_shape: Sequence[int], threads: int) -> Runner:
    """A zero-argument call that runs one inference of the model on a fixed random input."""
    session = ort.InferenceSession(onnx_bytes, sess_options=ort_session_options(threads),
                                   providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"an ONNX model to time must have exactly one input, this one has {len(inputs)}")
    feed = {inputs[0].name: np.random.default_rng(INPUT_SEED).standard_normal(tuple(input_shape),
                                                                             dtype=np.float32)}
    output_names = [output.name for output in session.get_outputs()]
    run = session.run

    def runner() -> None:
        run(output_names, feed)

    runner()  # fails here, not in the timing loop, when the shape does not fit the model
    return runner


def time_interleaved(runners: Sequence[Runner], protocol: TimingProtocol) -> list[TimingStats]:
    """Warm up each runner, then time them in interleaved rounds; one TimingStats per runner
    (the server's own loop and statistics: devices/measure/stats.py)."""
    if not runners:
        return []
    samples = interleaved_samples(runners, protocol.warmup, protocol.rounds, protocol.runs_per_round)
    return [TimingStats.from_samples(s) for s in samples]


def time_with_retries_and_samples(runners: Sequence[Runner], protocol: TimingProtocol) -> list[TimedSamples]:
    """:func:`time_with_retries` that also keeps, for each runner, the samples of the attempt whose
    statistics it returns (the server's own loop and retries: devices/measure/stats.py)."""
    return timed_with_retries(runners, protocol.warmup, protocol.rounds, protocol.runs_per_round,
                              protocol.max_spread, protocol.max_retries)


def time_with_retries(runners: Sequence[Runner], protocol: TimingProtocol) -> list[TimingStats]:
    """:func:`time_interleaved`, then re-time (interleaved) the entries whose spread is too wide;
    for each, the attempt with the smallest spread is kept."""
    return [timed.stats for timed in time_with_retries_and_samples(runners, protocol)]
