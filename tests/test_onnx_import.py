"""ONNX files in: conversion checked against ONNX Runtime, every refusal's message, and a converted
network analysed, pruned, exported and rebuilt like a built-in one.

Every ONNX file is exported here with ``torch.onnx.export`` from tiny networks (no binary files).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from adaptation.netadapt import export as export_module
from adaptation.netadapt import onnx_import
from adaptation.netadapt.graph import GroupPruner, NetworkAnalysis, UnsupportedNetwork, pruned_copy, rebuild_pruned
from adaptation.netadapt.architectures import architecture_from_dict
from adaptation.netadapt.onnx_import import TOLERANCE, OnnxArchitecture, OnnxImportError, convert_onnx
from adaptation.netadapt.spec import ArchitectureSpec

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PLAIN = ArchitectureSpec("plain_cnn", num_classes=10, in_channels=1, width=0.25, resolution=16)


def onnx_bytes(model: nn.Module, example: torch.Tensor, **options) -> bytes:
    """``model`` exported with the legacy exporter (opset 17 unless ``options`` say otherwise)."""
    options = {"dynamo": False, "opset_version": 17, "input_names": ["input"], "output_names": ["output"],
               **options}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), buffer, **options)
    return buffer.getvalue()


def trained_like(model: nn.Module) -> nn.Module:
    """Distinct batch-norm statistics and biases, as training leaves them (seeded)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.num_features, generator=generator) * 0.2)
    return model


@pytest.fixture(scope="module")
def plain_cnn() -> nn.Module:
    torch.manual_seed(0)
    return trained_like(PLAIN.build()).eval()


@pytest.fixture(scope="module")
def plain_onnx(plain_cnn) -> bytes:
    return onnx_bytes(plain_cnn, PLAIN.example_input(), dynamic_axes={"input": {0: "batch"}})


def ort_output(data: bytes, example: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]


# --------------------------------------------------------------------------- conversion


def test_a_converted_network_reproduces_onnx_runtime(plain_cnn, plain_onnx, tmp_path):
    path = tmp_path / "plain.onnx"
    path.write_bytes(plain_onnx)
    arch, model = convert_onnx(path)
    assert (arch.num_classes, arch.in_channels, arch.resolution) == (10, 1, 16)
    assert arch.path == str(path) and len(arch.sha256) == 64
    example = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        converted = model(example).numpy()
        original = plain_cnn(example).numpy()
    assert np.abs(converted - ort_output(plain_onnx, example)).max() <= TOLERANCE
    assert np.abs(converted - original).max() <= TOLERANCE


@pytest.mark.parametrize("options", [
    {"opset_version": 13},
    {"opset_version": 17, "keep_initializers_as_inputs": True},
], ids=["opset13", "initializers-as-inputs"])
def test_other_legacy_exports_convert(plain_cnn, options):
    arch, _ = convert_onnx(onnx_bytes(plain_cnn, PLAIN.example_input(), **options))
    assert arch.num_classes == 10


def test_an_export_of_fresh_weights_converts_despite_its_shared_tensors():
    """Folded fresh batch norms give identical zero biases: the exporter stores one and reads the
    others through Identity nodes, which onnx2torch alone cannot convert."""
    torch.manual_seed(0)
    data = onnx_bytes(PLAIN.build(), PLAIN.example_input())
    assert any(node.op_type == "Identity" for node in onnx.load_from_string(data).graph.node)
    arch, model = convert_onnx(data)
    with torch.no_grad():
        output = model(PLAIN.example_input()).numpy()
    assert np.abs(output - ort_output(data, PLAIN.example_input())).max() <= TOLERANCE


def test_the_architecture_rebuilds_the_network_from_its_file(plain_onnx, tmp_path):
    path = tmp_path / "plain.onnx"
    path.write_bytes(plain_onnx)
    arch, model = convert_onnx(path)
    stored = arch.to_dict()
    assert stored == {"arch": "onnx", "sha256": arch.sha256, "num_classes": 10, "in_channels": 1,
                      "resolution": 16, "path": str(path)}
    onnx_import._CACHE.clear()  # as in another process: rebuilt from the file
    again = architecture_from_dict(stored)
    assert isinstance(again, OnnxArchitecture) and again == arch
    built = again.build()
    assert built.training and built is not again.build()
    with torch.no_grad():
        assert torch.equal(built.eval()(arch.example_input()), model(arch.example_input()))
    assert architecture_from_dict(PLAIN.to_dict()) == PLAIN
    with pytest.raises(ValueError, match="architecture_from_dict"):
        ArchitectureSpec.from_dict(stored)  # the built-in class is what its hints say


def test_the_architecture_refuses_a_changed_file(plain_onnx, tmp_path):
    path = tmp_path / "plain.onnx"
    path.write_bytes(plain_onnx)
    arch, _ = convert_onnx(path)
    path.write_bytes(plain_onnx + b"\x00")
    onnx_import._CACHE.clear()
    with pytest.raises(OnnxImportError, match="has changed since it was converted"):
        OnnxArchitecture.from_dict(arch.to_dict()).build()
    path.unlink()
    with pytest.raises(OnnxImportError, match="is missing"):
        OnnxArchitecture.from_dict(arch.to_dict()).build()


# --------------------------------------------------------------------------- analysed and pruned


def test_a_converted_plain_cnn_is_analysed_pruned_and_runs(plain_onnx):
    arch, model = convert_onnx(plain_onnx)
    example = arch.example_input()
    analysis = NetworkAnalysis(model, example)
    assert len(analysis.groups) == 7  # as many as the built-in plain_cnn
    assert analysis.macs(analysis.original_config()) > 0

    targets = {group.name: group.channels // 2 for group in analysis.groups}
    pruned = pruned_copy(model, example, targets)
    assert GroupPruner(pruned, example).channels() == targets
    with torch.no_grad():
        assert pruned.eval()(arch.example_input(4)).shape == (4, 10)
    pruned_analysis = NetworkAnalysis(pruned, example)
    assert analysis.macs(targets) == pruned_analysis.macs(pruned_analysis.original_config())

    # It fine-tunes: gradients reach every weight.
    pruned.train()
    pruned(arch.example_input(4)).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in pruned.parameters())

    # A pruned network is rebuilt from the architecture and its channel configuration.
    rebuilt = rebuild_pruned(arch.build(), example, targets)
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(example), pruned.eval()(example))


def test_a_pruned_converted_network_exports_and_reloads(plain_onnx, tmp_path):
    """``export_all`` with an ONNX architecture, and ``load_pytorch`` rebuilds it from the file."""
    path = tmp_path / "plain.onnx"
    path.write_bytes(plain_onnx)
    arch, model = convert_onnx(path)
    example = arch.example_input()
    targets = {group.name: max(1, group.channels // 2) for group in NetworkAnalysis(model, example).groups}
    pruned = pruned_copy(model, example, targets)
    paths = export_module.export_all(pruned, arch, targets, tmp_path / "out", "final")
    assert sorted(paths) == ["onnx", "pytorch", "torchscript"]
    onnx_import._CACHE.clear()
    reloaded = export_module.load_pytorch(paths["pytorch"])
    with torch.no_grad():
        assert torch.equal(reloaded(example), pruned.eval()(example))


# --------------------------------------------------------------------------- refusals


class GroupedConvNet(nn.Module):
    """Converts fine, but NetAdapt cannot prune a grouped (not depthwise) convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3)
        self.grouped = nn.Conv2d(8, 8, 3, groups=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.grouped(torch.relu(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class FixedBatchNet(nn.Module):
    """``x.view(1, -1)``-style flattening: the exported graph works for one image only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(x.view(x.size(0), -1))


def small_net(*layers: nn.Module, channels: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 8, 3), *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


class Triu(nn.Module):
    """``torch.triu``: exported as ``Trilu``, an operator onnx2torch 1.5.15 has no converter for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.triu(x)


def image(channels: int = 1, height: int = 8, width: int | None = None, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, height, width or height)


def test_it_refuses_files_that_are_not_onnx(plain_onnx):
    for data, reason in [(b"", "the file is empty"),
                         (b"these are not weights", "cannot be decoded as an ONNX model"),
                         (b"PK\x03\x04" + bytes(40), "it is a zip archive"),
                         (plain_onnx[: len(plain_onnx) // 2], "it is truncated"),
                         (plain_onnx[:30], "it is truncated")]:
        with pytest.raises(OnnxImportError, match="not a valid ONNX file") as caught:
            convert_onnx(data)
        assert reason in str(caught.value)


@pytest.mark.parametrize("model, example, message", [
    (small_net(channels=4), image(4), "the model's input has 4 channels"),
    (small_net(), image(1, 8, 10), "the model's input is 8x10 px; NetAdapt needs square images"),
    (nn.Sequential(nn.Linear(12, 10)), torch.randn(1, 12), "has shape (1, 12); NetAdapt needs a batch of images"),
    (PLAIN.build(), image(1, 16, batch=4), "has a fixed batch of 4"),
    (nn.Conv2d(1, 8, 3), image(), "output 'output' has shape (1, 8, 6, 6)"),
], ids=["4 channels", "not square", "not images", "batch of 4", "feature map out"])
def test_it_refuses_inputs_and_outputs_that_do_not_fit(model, example, message):
    with pytest.raises(OnnxImportError) as caught:
        convert_onnx(onnx_bytes(model, example))
    assert message in str(caught.value)


def test_it_refuses_a_float16_input():
    model = onnx.load_from_string(onnx_bytes(small_net(), image()))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    with pytest.raises(OnnxImportError, match="holds float16 values"):
        convert_onnx(model.SerializeToString())


def test_it_names_the_operators_it_cannot_convert():
    data = onnx_bytes(small_net(Triu()), image())  # exports a Trilu node
    with pytest.raises(OnnxImportError, match=r"cannot be converted to PyTorch: Trilu \(opset 17\)"):
        convert_onnx(data)


def test_it_refuses_a_conversion_that_differs_from_onnx_runtime(plain_onnx, mismatching_conversion):
    """A converter bug, simulated (conftest.py): the converted network's classifier is off by 0.5."""
    with pytest.raises(OnnxImportError) as caught:
        convert_onnx(plain_onnx)
    message = str(caught.value)
    assert "does not reproduce the ONNX model" in message and "differ from ONNX Runtime's by up to 0.5" in message
    assert f"tolerance {TOLERANCE:g}" in message


def test_it_refuses_a_network_that_runs_on_one_image_only():
    with pytest.raises(OnnxImportError, match="runs only on one image at a time"):
        convert_onnx(onnx_bytes(FixedBatchNet(), image()))
    # The same network exported with a dynamic batch axis is fine.
    convert_onnx(onnx_bytes(FixedBatchNet(), image(), dynamic_axes={"input": {0: "batch"}}))


def test_an_unprunable_graph_gets_the_analysis_own_error():
    data = onnx_bytes(GroupedConvNet(), image())
    with pytest.raises(UnsupportedNetwork, match=r"layer '.*' is a grouped convolution \(groups=2\)"):
        convert_onnx(data)
    arch, _ = convert_onnx(data, analyse=False)  # a caller that analyses it itself
    assert arch.num_classes == 10
