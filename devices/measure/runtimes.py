"""Inference runtimes that turn a model into a zero-argument timed runner.

Each runner runs one inference on a fixed random input, so the timing
protocol can call it repeatedly without allocating inputs per call.

Thread policy:

* ONNX Runtime: each session gets its own intra-op pool of ``threads``
  threads. Spinning is disabled (``session.intra_op.allow_spinning=0``):
  the protocol interleaves many sessions, and an idle pool that keeps
  spinning after its run steals cores from the session timed next (badly
  so on small machines). The price is a thread wake-up per parallel
  section when ``threads > 1``; with ``threads == 1`` there is no pool and
  the setting has no effect.
* torch: ``torch.set_num_threads`` is process-global. The runner sets it
  when it differs (a cheap check), and :func:`time_interleaved` sets it for
  the whole timing window and restores the previous value afterwards.
"""

from __future__ import annotations

import copy
import io
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from devices.measure.builders import model_to_onnx, quiet_torch_deprecations
from devices.measure.stats import ort_session_options

INPUT_SEED = 1
"""Seed of the fixed random input every runner feeds."""

Runner = Callable[[], None]


def _random_input(input_shape: tuple[int, ...]) -> np.ndarray:
    """Seeded standard-normal float32 input of ``input_shape``."""
    return np.random.default_rng(INPUT_SEED).standard_normal(input_shape, dtype=np.float32)


def _check_threads(threads: int) -> None:
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")


class Runtime(ABC):
    """An inference engine that can build runners for ONNX graphs and/or torch modules."""

    name: str = ""
    supports_onnx: bool = False
    """Whether :meth:`load_onnx` works (torch runtimes only take modules)."""

    def version(self) -> str:
        """Version string of the engine (recorded next to every measurement)."""
        return torch.__version__

    @abstractmethod
    def load_onnx(self, onnx_bytes: bytes, input_shape: tuple[int, ...], threads: int) -> Runner:
        """Runner executing one inference of a serialized ONNX model."""

    @abstractmethod
    def load_module(self, module: nn.Module, input_shape: tuple[int, ...], threads: int) -> Runner:
        """Runner executing one inference of a torch module (the caller's module is not modified)."""

    @abstractmethod
    def load_network(self, data: bytes, input_shape: tuple[int, ...], threads: int) -> Runner:
        """Runner executing one inference of a whole network's file, as
        ``builders.network_file`` writes it for this runtime (ONNX, or TorchScript)."""


class OnnxRuntimeRuntime(Runtime):
    """ONNX Runtime, CPU execution provider, all graph optimizations."""

    name = "onnxruntime"
    supports_onnx = True

    def version(self) -> str:
        return ort.__version__

    @staticmethod
    def session_options(threads: int) -> ort.SessionOptions:
        """The options every timing uses, the agent's too (``stats.ort_session_options``)."""
        return ort_session_options(threads)

    def load_onnx(self, onnx_bytes: bytes, input_shape: tuple[int, ...], threads: int) -> Runner:
        session = ort.InferenceSession(
            onnx_bytes, sess_options=self.session_options(threads), providers=["CPUExecutionProvider"]
        )
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"ONNX model must have exactly one input, has {len(inputs)}")
        feed = {inputs[0].name: _random_input(tuple(input_shape))}
        output_names = [output.name for output in session.get_outputs()]
        run = session.run

        def runner() -> None:
            run(output_names, feed)

        return runner

    def load_module(self, module: nn.Module, input_shape: tuple[int, ...], threads: int) -> Runner:
        example = torch.from_numpy(_random_input(tuple(input_shape)))
        return self.load_onnx(model_to_onnx(module, example), input_shape, threads)

    def load_network(self, data: bytes, input_shape: tuple[int, ...], threads: int) -> Runner:
        return self.load_onnx(data, input_shape, threads)


def _load_torchscript(data: bytes) -> torch.jit.ScriptModule:
    """A saved TorchScript module, in eval mode (deprecation warnings of ``torch.jit`` silenced)."""
    with quiet_torch_deprecations():
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


class TorchEagerRuntime(Runtime):
    """Eager PyTorch under ``torch.inference_mode`` (BN and activations unfused).

    A whole network comes as a TorchScript file (the server's measurer has none of the Python
    classes that built it): it runs with the graph executor's optimizations off, so each of its
    torch operations runs as eager would run it, unfused, but without Python's per-module calls.
    That is somewhat quicker than the eager module itself (one unrecorded check, not a benchmark);
    the table's calibration against these measurements is expected to absorb it.
    """

    name = "torch"

    def load_onnx(self, onnx_bytes: bytes, input_shape: tuple[int, ...], threads: int) -> Runner:
        raise NotImplementedError(f"runtime {self.name!r} runs torch modules only; use load_module")

    def _prepare(self, module: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], object]:
        """Eval-mode copy, so the caller's module keeps its state."""
        return copy.deepcopy(module).eval()

    def load_module(self, module: nn.Module, input_shape: tuple[int, ...], threads: int) -> Runner:
        _check_threads(threads)
        example = torch.from_numpy(_random_input(tuple(input_shape)))
        prepared = self._prepare(module, example)

        return self._runner(prepared, example, threads)

    @staticmethod
    def _runner(prepared: Callable[[torch.Tensor], object], example: torch.Tensor, threads: int) -> Runner:
        def runner() -> None:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            with torch.inference_mode():
                prepared(example)

        return runner

    def load_network(self, data: bytes, input_shape: tuple[int, ...], threads: int) -> Runner:
        _check_threads(threads)
        example = torch.from_numpy(_random_input(tuple(input_shape)))
        loaded = _load_torchscript(data)

        def unoptimized(tensor: torch.Tensor) -> object:
            with torch.jit.optimized_execution(False):
                return loaded(tensor)

        return self._runner(unoptimized, example, threads)


class TorchScriptRuntime(TorchEagerRuntime):
    """``torch.jit.trace`` + ``torch.jit.freeze`` (folds BN into conv).

    The profiling executor specialises the graph during the first calls,
    so a warm-up of at least 2 runs is needed before timing.
    """

    name = "torchscript"

    def _prepare(self, module: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], object]:
        """Traced and frozen eval-mode copy; TorchScript deprecation warnings silenced."""
        with torch.no_grad(), quiet_torch_deprecations():
            traced = torch.jit.trace(super()._prepare(module, example), example)
            return torch.jit.freeze(traced)

    def load_network(self, data: bytes, input_shape: tuple[int, ...], threads: int) -> Runner:
        """The saved (traced) network, frozen here as :meth:`_prepare` freezes a module."""
        _check_threads(threads)
        example = torch.from_numpy(_random_input(tuple(input_shape)))
        with quiet_torch_deprecations():
            frozen = torch.jit.freeze(_load_torchscript(data))
        return self._runner(frozen, example, threads)


RUNTIMES: dict[str, type[Runtime]] = {
    OnnxRuntimeRuntime.name: OnnxRuntimeRuntime,
    TorchEagerRuntime.name: TorchEagerRuntime,
    TorchScriptRuntime.name: TorchScriptRuntime,
}
"""Runtime classes by name; "onnxruntime" is the default everywhere."""


def get_runtime(name: str) -> Runtime:
    """Instantiate the runtime called ``name``; ValueError listing valid names otherwise."""
    try:
        return RUNTIMES[name]()
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; valid names: {sorted(RUNTIMES)}") from None
