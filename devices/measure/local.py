"""Measure layer signatures and whole models on this machine's CPU."""

from __future__ import annotations

import os
import platform
from typing import Callable, Sequence

import onnxruntime as ort
import torch
from torch import nn

from devices.measure.builders import signature_input_shape, signature_module, signature_onnx
from devices.measure.protocol import MeasureProtocol, TimedSamples, time_with_retries, time_with_retries_and_samples
from devices.measure.runtimes import Runner, get_runtime
from devices.measure.signature import LayerSignature
from devices.measure.stats import TimingStats

DEFAULT_CHUNK_SIZE = 32
"""Signatures whose runners exist at the same time (bounds memory)."""
SENTINEL_TOLERANCE = 1.10
"""A chunk whose sentinel ran this much slower than in the quickest chunk was timed under load."""


class LocalMeasurer:
    """Measures layer signatures and whole models on this machine's CPU."""

    def __init__(
        self,
        runtime: str = "onnxruntime",
        protocol: MeasureProtocol = MeasureProtocol(),
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.runtime = get_runtime(runtime)
        self.runtime_name: str = self.runtime.name
        self.runtime_version: str = self.runtime.version()
        self.protocol = protocol
        self.threads: int = protocol.threads
        self.chunk_size = chunk_size

    def _signature_runner(self, sig: LayerSignature) -> Runner:
        """Runner for one signature: a direct ONNX graph when the runtime takes ONNX, else a torch module."""
        shape = signature_input_shape(sig)
        if self.runtime.supports_onnx:
            return self.runtime.load_onnx(signature_onnx(sig), shape, self.threads)
        return self.runtime.load_module(signature_module(sig), shape, self.threads)

    def measure_signatures(
        self,
        signatures: Sequence[LayerSignature],
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[LayerSignature, TimingStats]:
        """Latency of each distinct signature (duplicates are measured once).

        Signatures are measured ``chunk_size`` at a time, interleaved within a chunk, together
        with a sentinel (the first signature) timed in every chunk. A chunk timed while another
        process held the CPU is slow throughout: its minima are inflated yet its spread stays
        narrow, so the spread check cannot see it, but its sentinel ran slower than in the
        quickest chunk. Chunks whose sentinel's minimum exceeds the quickest by more than
        ``SENTINEL_TOLERANCE`` are timed again (up to ``max_retries`` passes), keeping each
        entry's attempt with the lower minimum. ``on_progress(done, total)`` is called after each
        chunk of the first pass, counting distinct signatures.
        """
        unique = list(dict.fromkeys(signatures))
        results: dict[LayerSignature, TimingStats] = {}
        if not unique:
            return results
        sentinel = self._signature_runner(unique[0])
        chunks = [unique[start:start + self.chunk_size] for start in range(0, len(unique), self.chunk_size)]
        sentinel_min: list[float] = []
        for chunk in chunks:
            sentinel_min.append(self._time_chunk(chunk, sentinel, results))
            if on_progress is not None:
                on_progress(len(results), len(unique))
        for _ in range(self.protocol.max_retries):
            best = min(sentinel_min)
            loaded = [n for n, value in enumerate(sentinel_min) if value > best * SENTINEL_TOLERANCE]
            if not loaded:
                break
            for n in loaded:
                sentinel_min[n] = min(sentinel_min[n], self._time_chunk(chunks[n], sentinel, results))
        return results

    def _time_chunk(self, chunk: Sequence[LayerSignature], sentinel: Runner,
                    results: dict[LayerSignature, TimingStats]) -> float:
        """Time ``chunk`` interleaved with the sentinel; keep each entry's lower minimum in
        ``results``. Returns the sentinel's minimum in this chunk."""
        runners = [self._signature_runner(sig) for sig in chunk]
        *timed, sentinel_stats = time_with_retries([*runners, sentinel], self.protocol)
        del runners  # release sessions before building the next chunk
        for sig, stats in zip(chunk, timed):
            if sig not in results or stats.min_ms < results[sig].min_ms:
                results[sig] = stats
        return sentinel_stats.min_ms

    def measure_models(self, models: Sequence[nn.Module], example_input: torch.Tensor) -> list[TimingStats]:
        """Whole-network latency of each model on inputs shaped like ``example_input``, interleaved."""
        shape = tuple(example_input.shape)
        runners = [self.runtime.load_module(model, shape, self.threads) for model in models]
        return time_with_retries(runners, self.protocol)

    def measure_models_with_samples(self, models: Sequence[nn.Module],
                                    example_input: torch.Tensor) -> list[TimedSamples]:
        """:meth:`measure_models` that also returns each model's per-run times (ms), the samples
        its statistics were computed from (for a histogram)."""
        shape = tuple(example_input.shape)
        runners = [self.runtime.load_module(model, shape, self.threads) for model in models]
        return time_with_retries_and_samples(runners, self.protocol)

    def measure_network_files(self, files: Sequence[bytes], input_shape: Sequence[int]) -> list[TimingStats]:
        """Whole-network latency of each network file (``builders.network_file`` for this
        runtime: ONNX, or TorchScript for the torch runtimes) on ``input_shape``, interleaved."""
        return time_with_retries(self._network_runners(files, input_shape), self.protocol)

    def measure_network_files_with_samples(self, files: Sequence[bytes],
                                           input_shape: Sequence[int]) -> list[TimedSamples]:
        """:meth:`measure_network_files` that also returns each network's per-run times (ms)."""
        return time_with_retries_and_samples(self._network_runners(files, input_shape), self.protocol)

    def _network_runners(self, files: Sequence[bytes], input_shape: Sequence[int]) -> list[Runner]:
        shape = tuple(int(size) for size in input_shape)
        return [self.runtime.load_network(data, shape, self.threads) for data in files]

    def measure_onnx(
        self, onnx_models: Sequence[bytes], input_shapes: Sequence[tuple[int, ...]]
    ) -> list[TimingStats]:
        """Latency of serialized ONNX models, each run on its input shape, interleaved."""
        if len(onnx_models) != len(input_shapes):
            raise ValueError(f"{len(onnx_models)} models but {len(input_shapes)} input shapes")
        if not self.runtime.supports_onnx:
            raise ValueError(f"runtime {self.runtime_name!r} cannot run ONNX models; use 'onnxruntime'")
        runners = [
            self.runtime.load_onnx(model, tuple(shape), self.threads)
            for model, shape in zip(onnx_models, input_shapes)
        ]
        return time_with_retries(runners, self.protocol)


def _cpu_model() -> str:
    """CPU model name from /proc/cpuinfo when present, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_bytes() -> int | None:
    """Physical memory in bytes, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def device_facts() -> dict:
    """Facts about this machine and software stack, stored next to its measurements."""
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    return {
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores,
        "memory_bytes": _memory_bytes(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
    }
