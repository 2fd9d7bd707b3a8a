"""Builders, runtimes, the timing protocol and LocalMeasurer (light protocol, small shapes)."""

import dataclasses
import gc
import io
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from devices.measure import LayerSignature, MeasureProtocol, time_interleaved
from devices.measure.builders import (model_to_onnx, model_to_torchscript, network_file, network_suffix,
                                      signature_input_shape, signature_module, signature_onnx)
from devices.measure.local import LocalMeasurer, device_facts
from devices.measure.runtimes import RUNTIMES, get_runtime
from tests.test_measure_signature import SmallNet

LIGHT = MeasureProtocol(warmup=2, rounds=2, runs_per_round=5)


def conv_sig(i: int, o: int, k: int, hw: int, fused: str = "bn+relu", **changes) -> LayerSignature:
    sig = LayerSignature("conv", i, o, (k, k), (1, 1), (k // 2, k // 2), (1, 1), 1, (hw, hw), 1, False, fused)
    return dataclasses.replace(sig, **changes)


TINY = conv_sig(8, 8, 1, 4)
HEAVY = conv_sig(64, 64, 3, 32)
LINEAR = LayerSignature("linear", 16, 10, (1, 1), (1, 1), (0, 0), (1, 1), 1, (1, 1), 3, True, "relu")
FUSIONS = ["", "bn", "bn+relu", "bn+relu6", "bn+hardswish", "bn+silu", "bn+hardsigmoid", "bn+sigmoid", "relu"]


def run_onnx(model: bytes, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(["output"], {"input": x})[0]


@pytest.mark.parametrize("sig", [
    *(conv_sig(6, 12, 3, 9, fused=f, stride=(2, 1)) for f in FUSIONS),
    conv_sig(8, 8, 3, 7, groups=8, dilation=(2, 2), padding=(2, 2)),
    LINEAR,
])
def test_signature_onnx_checks_and_matches_torch_shape(sig: LayerSignature) -> None:
    model = signature_onnx(sig)
    onnx.checker.check_model(onnx.load_from_string(model))
    x = np.random.default_rng(0).standard_normal(signature_input_shape(sig), dtype=np.float32)
    out = run_onnx(model, x)
    with torch.no_grad():
        expected = signature_module(sig)(torch.from_numpy(x))
    assert out.shape == tuple(expected.shape)
    if sig.fused.endswith(("relu", "relu6", "sigmoid", "hardsigmoid")):
        assert out.min() >= 0
    if sig.fused.endswith("relu6"):
        assert out.max() <= 6


def test_model_to_onnx_matches_torch_and_restores_mode() -> None:
    net = SmallNet().train()
    with torch.no_grad():  # give BN non-trivial statistics
        for _ in range(3):
            net(torch.randn(4, 3, 32, 32))
    net.train()
    x = torch.randn(2, 3, 32, 32)
    model = model_to_onnx(net, x)
    assert net.training and all(m.training for m in net.modules())
    with torch.no_grad():
        expected = net.eval()(x).numpy()
    np.testing.assert_allclose(run_onnx(model, x.numpy()), expected, atol=1e-4, rtol=1e-4)


def test_get_runtime_names_and_errors() -> None:
    assert set(RUNTIMES) == {"onnxruntime", "torch", "torchscript"}
    assert get_runtime("onnxruntime").version() == ort.__version__
    with pytest.raises(ValueError, match="onnxruntime"):
        get_runtime("tensorrt")
    with pytest.raises(NotImplementedError):
        get_runtime("torch").load_onnx(signature_onnx(TINY), signature_input_shape(TINY), 1)


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_every_runtime_runner_runs(name: str) -> None:
    runtime = get_runtime(name)
    net = SmallNet().train()
    runners = [runtime.load_module(net, (1, 3, 32, 32), threads=1)]
    if runtime.supports_onnx:
        runners.append(runtime.load_onnx(signature_onnx(LINEAR), signature_input_shape(LINEAR), threads=1))
    for runner in runners:
        runner()
        runner()
    assert net.training  # the caller's module is left as it was


def test_time_interleaved_counts_and_gc_restored() -> None:
    calls = {"a": 0, "b": 0}

    def make(name: str):
        def runner() -> None:
            calls[name] += 1
        return runner

    stats = time_interleaved([make("a"), make("b")], LIGHT)
    assert [s.n for s in stats] == [LIGHT.rounds * LIGHT.runs_per_round] * 2
    assert calls == {"a": 12, "b": 12}  # warmup 2 + 2 rounds x 5
    assert gc.isenabled()

    def failing() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        time_interleaved([failing], LIGHT)
    assert gc.isenabled()
    assert time_interleaved([], LIGHT) == []


def test_protocol_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        MeasureProtocol(rounds=0)
    with pytest.raises(ValueError):
        MeasureProtocol(max_spread=0)


@pytest.mark.parametrize("name", ["onnxruntime", "torch"])
def test_heavy_layer_measures_slower_than_tiny(name: str) -> None:
    measurer = LocalMeasurer(name, LIGHT)
    stats = measurer.measure_signatures([TINY, HEAVY])
    assert stats[HEAVY].min_ms > stats[TINY].min_ms


def test_measure_signatures_dedupes_and_reports_progress() -> None:
    sigs = [TINY, LINEAR, TINY, conv_sig(8, 16, 3, 8), LINEAR]
    progress: list[tuple[int, int]] = []
    measurer = LocalMeasurer("onnxruntime", LIGHT, chunk_size=2)
    stats = measurer.measure_signatures(sigs, on_progress=lambda done, total: progress.append((done, total)))
    assert list(stats) == [TINY, LINEAR, conv_sig(8, 16, 3, 8)]
    assert all(s.n == LIGHT.rounds * LIGHT.runs_per_round and s.min_ms > 0 for s in stats.values())
    assert progress == [(2, 3), (3, 3)]
    assert (measurer.runtime_name, measurer.runtime_version, measurer.threads) == ("onnxruntime", ort.__version__, 1)


class LoadedFirstChunk(LocalMeasurer):
    """A measurer whose layers are busy-waits of known length (base per signature), made twice as
    slow while its first chunk is timed: another process holding the CPU, reproducibly."""

    def __init__(self, base_us: dict, **kwargs) -> None:
        super().__init__("onnxruntime", **kwargs)
        self.base_us, self.factor, self.chunks_timed, self.built = base_us, 1.0, 0, []

    def _signature_runner(self, sig):
        self.built.append(sig)
        base = self.base_us[sig] * 1e-6

        def runner() -> None:
            end = time.perf_counter() + base * self.factor
            while time.perf_counter() < end:
                pass
        return runner

    def _time_chunk(self, chunk, sentinel, results):
        self.factor = 2.0 if self.chunks_timed == 0 else 1.0
        self.chunks_timed += 1
        return super()._time_chunk(chunk, sentinel, results)


def test_a_chunk_timed_under_load_is_timed_again() -> None:
    sigs = [TINY, LINEAR, conv_sig(8, 16, 3, 8), conv_sig(16, 16, 3, 8)]
    base_us = dict(zip(sigs, (200, 300, 400, 500)))
    measurer = LoadedFirstChunk(base_us, protocol=MeasureProtocol(threads=1, warmup=1, rounds=3, runs_per_round=5),
                                chunk_size=2)
    stats = measurer.measure_signatures(sigs)
    # The first chunk (slow throughout, so narrow: the spread check alone would keep it) was timed again.
    assert measurer.built.count(LINEAR) >= 2 and measurer.chunks_timed >= 3
    for sig, base in base_us.items():
        assert base * 1e-3 <= stats[sig].min_ms < 1.5 * base * 1e-3, (sig, stats[sig].min_ms)


def test_measure_models_and_onnx_one_stats_each() -> None:
    measurer = LocalMeasurer("onnxruntime", LIGHT)
    x = torch.randn(1, 3, 32, 32)
    stats = measurer.measure_models([SmallNet(), SmallNet()], x)
    assert len(stats) == 2 and all(s.n == 10 for s in stats)
    onnx_stats = measurer.measure_onnx([signature_onnx(TINY), signature_onnx(LINEAR)],
                                       [signature_input_shape(TINY), signature_input_shape(LINEAR)])
    assert len(onnx_stats) == 2 and all(s.min_ms > 0 for s in onnx_stats)
    with pytest.raises(ValueError, match="onnxruntime"):
        LocalMeasurer("torchscript", LIGHT).measure_onnx([signature_onnx(TINY)], [signature_input_shape(TINY)])


def test_a_network_file_is_what_its_runtime_loads_and_computes_the_network() -> None:
    """ONNX for ONNX Runtime (on a server, an agent or a browser), TorchScript for the torch
    runtimes: devices times these files without the classes that built the network."""
    net = SmallNet().train()
    x = torch.randn(1, 3, 32, 32)
    assert [network_suffix(name) for name in ("onnxruntime", "onnxruntime-web", "torch", "torchscript")] == [
        ".onnx", ".onnx", ".pt", ".pt"]
    assert network_file(net, x, "onnxruntime") == model_to_onnx(net, x)
    script = network_file(net, x, "torch")
    assert net.training and all(m.training for m in net.modules())  # restored
    loaded = torch.jit.load(io.BytesIO(script))
    with torch.no_grad():
        np.testing.assert_allclose(loaded.eval()(x).numpy(), net.eval()(x).numpy(), atol=1e-5)
    assert isinstance(model_to_torchscript(net, x), bytes)


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_every_runtime_times_network_files(name: str) -> None:
    """A small and a much larger network, timed from their files interleaved (with per-run samples
    for a histogram too): one result each, in order."""
    small, large = nn.Conv2d(3, 4, 1), nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1))
    x = torch.zeros(1, 3, 32, 32)
    files = [network_file(model, x, name) for model in (small, large)]
    measurer = LocalMeasurer(name, LIGHT)
    stats = measurer.measure_network_files(files, [1, 3, 32, 32])
    assert len(stats) == 2 and all(s.n == LIGHT.rounds * LIGHT.runs_per_round for s in stats)
    assert stats[1].min_ms > 5 * stats[0].min_ms, stats
    (timed,) = measurer.measure_network_files_with_samples(files[:1], (1, 3, 32, 32))
    assert len(timed.samples_ms) == timed.stats.n and timed.stats.min_ms == min(timed.samples_ms)


def test_device_facts_fields() -> None:
    facts = device_facts()
    assert {"os", "cpu_model", "cores", "memory_bytes", "python", "onnxruntime", "torch"} <= set(facts)
    assert facts["cores"] >= 1 and facts["onnxruntime"] == ort.__version__ and facts["torch"] == torch.__version__
