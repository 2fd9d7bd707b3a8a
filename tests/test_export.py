"""Exports of a pruned network: ONNX, TorchScript and the rebuildable PyTorch format."""
from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from adaptation.netadapt.export import (export_all, export_onnx, export_pytorch, export_torchscript,
                                        load_pytorch)
from adaptation.netadapt.graph import GroupPruner, NetworkAnalysis, pruned_copy
from adaptation.netadapt.spec import ArchitectureSpec

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SPECS = {
    "plain_cnn": ArchitectureSpec("plain_cnn", 10, 1, 0.5, 16),
    "mobilenet_v1": ArchitectureSpec("mobilenet_v1", 10, 1, 0.25, 16),
}


def _randomise_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Non-trivial BN statistics and affine parameters, so every weight shows in the outputs."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.num_features, generator=generator))
                module.bias.copy_(0.2 * torch.randn(module.num_features, generator=generator))
                module.momentum = None
        model.train()
        model(torch.randn((8, *x.shape[1:]), generator=generator))
    model.eval()


@pytest.fixture(scope="module", params=list(SPECS))
def pruned(request):
    """(spec, pruned model, its channel configuration): every group shrunk by 8 channels."""
    spec = SPECS[request.param]
    torch.manual_seed(0)
    model = spec.build()
    x = spec.example_input()
    _randomise_batchnorm(model, x)
    analysis = NetworkAnalysis(model, x)
    config = {g.name: g.channels - 8 for g in analysis.groups if g.channels > 8}
    assert config
    model = pruned_copy(model, x, config).eval()
    channels = GroupPruner(model, x).channels()
    assert channels != analysis.original_config()
    return spec, model, channels


def _inputs(spec: ArchitectureSpec) -> torch.Tensor:
    return spec.example_input()


def _torch_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_onnx_export_runs_in_onnxruntime_like_torch(pruned, tmp_path):
    spec, model, _ = pruned
    x = _inputs(spec)
    path = tmp_path / "model.onnx"
    error = export_onnx(model, x, path)
    assert path.stat().st_size > 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    reference = _torch_out(model, x).numpy()
    assert output.shape == reference.shape
    assert np.max(np.abs(output - reference)) <= 1e-4
    assert 0 <= error <= 1e-4


def test_torchscript_export_reloads_with_identical_outputs(pruned, tmp_path):
    spec, model, _ = pruned
    x = _inputs(spec)
    path = tmp_path / "model.torchscript.pt"
    export_torchscript(model, x, path)
    loaded = torch.jit.load(str(path))
    other = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for batch in (x, other):
            assert torch.allclose(loaded(batch), _torch_out(model, batch), atol=1e-5)


def test_pytorch_export_rebuilds_the_same_network(pruned, tmp_path):
    spec, model, channels = pruned
    x = _inputs(spec)
    path = tmp_path / "model.pt"
    export_pytorch(model, spec, channels, path)
    rebuilt = load_pytorch(path)
    assert not rebuilt.training
    assert GroupPruner(rebuilt, x).channels() == channels
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes
    other = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    for batch in (x, other):
        assert torch.equal(_torch_out(rebuilt, batch), _torch_out(model, batch))
    # The payload is plain data: it loads with weights_only and names its format.
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "netadapt-pytorch/1"
    assert payload["channels"] == channels
    assert ArchitectureSpec.from_dict(payload["architecture"]) == spec


def test_export_all_writes_every_format(pruned, tmp_path):
    spec, model, channels = pruned
    paths = export_all(model, spec, channels, tmp_path / "out", "final")
    assert set(paths) == {"onnx", "torchscript", "pytorch"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())


def test_load_pytorch_rejects_a_torch_file_of_another_kind(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "format": "something-else"}, path)
    with pytest.raises(ValueError, match="netadapt-pytorch/1"):
        load_pytorch(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="netadapt-pytorch/1"):
        load_pytorch(path)


@pytest.mark.parametrize("content", [b"this is not a model\n" * 20, b""], ids=["text", "empty"])
def test_load_pytorch_rejects_a_file_that_is_not_a_torch_archive(tmp_path, content):
    path = tmp_path / "random.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        load_pytorch(path)


def test_load_pytorch_reads_from_a_buffer(pruned):
    spec, model, channels = pruned
    buffer = io.BytesIO()
    torch.save({"format": "netadapt-pytorch/1", "architecture": spec.to_dict(),
                "channels": dict(channels), "state_dict": model.state_dict()}, buffer)
    buffer.seek(0)
    rebuilt = load_pytorch(buffer)
    assert torch.equal(_torch_out(rebuilt, _inputs(spec)), _torch_out(model, _inputs(spec)))


def test_one_tolerance_and_one_error_summary_serve_every_onnx_check():
    """Pre-flight, the ONNX import and the exports judge a conversion alike; error messages are
    summarised alike (the informative first line, torch's unpickler advice skipped)."""
    import numpy as np

    from adaptation import preflight
    from adaptation.netadapt import export, onnx_import
    from adaptation.netadapt.checks import ONNX_TOLERANCE, error_summary, onnx_difference, onnx_matches

    assert preflight.ONNX_TOLERANCE == onnx_import.TOLERANCE == ONNX_TOLERANCE
    assert export.export_onnx.__defaults__ == (ONNX_TOLERANCE,)
    reference = np.array([[0.5, -3.0]], dtype=np.float32)
    assert onnx_difference(reference, reference + 2e-4) == pytest.approx((2e-4, 3e-4), rel=1e-3)
    assert onnx_matches(reference, reference + 2e-4) and not onnx_matches(reference, reference + 4e-4)
    assert not onnx_matches(np.array([np.nan]), np.array([np.nan]))  # nothing matches a NaN
    advice = RuntimeError("Weights only load failed. Long advice.\nMore advice.\n"
                          "WeightsUnpickler error: Unsupported global: GLOBAL os.system\n\nCheck the docs.")
    assert error_summary(advice) == "Unsupported global: GLOBAL os.system"
    assert error_summary(ValueError("\n  first line  \nsecond")) == "first line"
    assert error_summary(ValueError()) == ""
    assert len(error_summary(ValueError("x" * 1000))) == 300
