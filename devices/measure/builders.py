"""Build runnable stand-ins (ONNX graphs, torch modules) for layer signatures, and the files a
whole network is measured from (ONNX, or TorchScript for the torch runtimes).

A signature is measured by running a one-layer network with exactly its
shape. ONNX graphs are written directly with ``onnx.helper`` because a
torch export per signature would dominate the cost of building a
latency table with thousands of entries.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from devices.measure.signature import LayerSignature

WEIGHT_SEED = 0
"""Seed of the random weights; fixed so built layers are reproducible."""

MIN_ONNX_OPSET = 14  # HardSwish appeared in opset 14; Clip takes min/max inputs since 11

TORCHSCRIPT_RUNTIMES = frozenset({"torch", "torchscript"})
"""Runtimes that run torch modules, not ONNX: a whole network reaches them as a TorchScript file."""


def signature_input_shape(sig: LayerSignature) -> tuple[int, ...]:
    """Input shape the layer is run on: (batch, in, H, W) for conv, (batch, in) for linear."""
    if sig.op == "linear":
        return (sig.batch, sig.in_channels)
    return (sig.batch, sig.in_channels, *sig.input_hw)


def _output_shape(sig: LayerSignature) -> tuple[int, ...]:
    """Output shape of the layer (fused ops keep it)."""
    if sig.op == "linear":
        return (sig.batch, sig.out_channels)
    return (sig.batch, sig.out_channels, *sig.output_hw())


def _activation_nodes(activation: str, source: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """ONNX nodes (and constant initializers) computing ``activation`` of ``source`` into "output"."""
    if activation == "relu":
        return [helper.make_node("Relu", [source], ["output"])], []
    if activation == "relu6":
        bounds = [numpy_helper.from_array(np.array(v, dtype=np.float32), name)
                  for v, name in ((0.0, "clip_min"), (6.0, "clip_max"))]
        return [helper.make_node("Clip", [source, "clip_min", "clip_max"], ["output"])], bounds
    if activation == "hardswish":
        return [helper.make_node("HardSwish", [source], ["output"])], []
    if activation == "hardsigmoid":  # torch: relu6(x + 3) / 6
        return [helper.make_node("HardSigmoid", [source], ["output"], alpha=1.0 / 6.0, beta=0.5)], []
    if activation == "sigmoid":
        return [helper.make_node("Sigmoid", [source], ["output"])], []
    if activation == "silu":
        return [
            helper.make_node("Sigmoid", [source], ["silu_gate"]),
            helper.make_node("Mul", [source, "silu_gate"], ["output"]),
        ], []
    raise ValueError(f"unknown activation {activation!r}")


def signature_onnx(sig: LayerSignature, opset: int = 17) -> bytes:
    """Serialized, checker-validated one-layer ONNX model for ``sig``.

    A fused BN is represented already folded into the conv (a conv bias),
    as inference runtimes do; weights are random float32 (seeded).
    """
    if not MIN_ONNX_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be in [{MIN_ONNX_OPSET}, {onnx.defs.onnx_opset_version()}], got {opset}")
    rng = np.random.default_rng(WEIGHT_SEED)
    activation = sig.fused.removeprefix("bn").lstrip("+")
    has_bias = sig.bias or sig.fused.startswith("bn")
    layer_output = "layer_out" if activation else "output"

    if sig.op == "conv":
        weight_shape = (sig.out_channels, sig.in_channels // sig.groups, *sig.kernel)
    else:
        weight_shape = (sig.out_channels, sig.in_channels)
    fan_in = int(np.prod(weight_shape[1:]))
    weight = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=weight_shape).astype(np.float32)
    initializers = [numpy_helper.from_array(weight, "weight")]
    layer_inputs = ["input", "weight"]
    if has_bias:
        bias = rng.normal(0.0, 0.1, size=(sig.out_channels,)).astype(np.float32)
        initializers.append(numpy_helper.from_array(bias, "bias"))
        layer_inputs.append("bias")

    if sig.op == "conv":
        layer_node = helper.make_node(
            "Conv", layer_inputs, [layer_output],
            kernel_shape=list(sig.kernel), strides=list(sig.stride),
            pads=[sig.padding[0], sig.padding[1], sig.padding[0], sig.padding[1]],
            dilations=list(sig.dilation), group=sig.groups,
        )
    else:
        layer_node = helper.make_node("Gemm", layer_inputs, [layer_output], transB=1)
    nodes = [layer_node]
    if activation:
        activation_nodes, constants = _activation_nodes(activation, layer_output)
        nodes += activation_nodes
        initializers += constants

    graph = helper.make_graph(
        nodes, f"signature_{sig.op}",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, signature_input_shape(sig))],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, _output_shape(sig))],
        initializer=initializers,
    )
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph, opset_imports=opset_ids, producer_name="devices.measure",
        ir_version=helper.find_min_ir_version_for(opset_ids),
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish,
    "silu": nn.SiLU, "hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid,
}


def signature_module(sig: LayerSignature) -> nn.Module:
    """Eval-mode torch layer (+ BatchNorm2d + activation) matching ``sig``, seeded random weights.

    The BN is kept as a separate module: eager torch runs it unfused, and
    TorchScript freezing folds it, mirroring each runtime's real cost.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        if sig.op == "conv":
            layers: list[nn.Module] = [nn.Conv2d(
                sig.in_channels, sig.out_channels, sig.kernel, stride=sig.stride,
                padding=sig.padding, dilation=sig.dilation, groups=sig.groups, bias=sig.bias,
            )]
        else:
            layers = [nn.Linear(sig.in_channels, sig.out_channels, bias=sig.bias)]
        if sig.fused.startswith("bn"):
            batch_norm = nn.BatchNorm2d(sig.out_channels)
            batch_norm.running_mean.normal_(0.0, 0.1)
            batch_norm.running_var.uniform_(0.5, 1.5)
            layers.append(batch_norm)
        activation = sig.fused.removeprefix("bn").lstrip("+")
        if activation:
            layers.append(_ACTIVATION_MODULES[activation]())
    return nn.Sequential(*layers).eval()


@contextmanager
def quiet_torch_deprecations() -> Iterator[None]:
    """torch's DeprecationWarning / FutureWarning about ``torch.jit`` and the TorchScript-based
    ONNX exporter silenced: both are chosen on purpose and still work."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


@contextmanager
def _exporting(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode under no_grad, quietly; every submodule's training flag restored."""
    training_flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), quiet_torch_deprecations():
            yield
    finally:
        for module, was_training in training_flags:
            module.training = was_training


def model_to_onnx(model: nn.Module, example_input: torch.Tensor, opset: int = 17) -> bytes:
    """Export ``model`` (eval mode, no grad) with the TorchScript-based exporter to ONNX bytes.

    Every submodule's training flag is restored afterwards. The exporter's
    deprecation warnings are silenced: ``dynamo=False`` is chosen on
    purpose (no extra dependencies, deterministic graphs for CNNs).
    """
    buffer = io.BytesIO()
    with _exporting(model):
        torch.onnx.export(
            model, (example_input,), buffer, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["output"],
        )
    return buffer.getvalue()


def model_to_torchscript(model: nn.Module, example_input: torch.Tensor) -> bytes:
    """Trace ``model`` (eval mode, no grad) into a saved TorchScript module, not frozen.

    Every submodule's training flag is restored afterwards; torch's deprecation warnings about
    ``torch.jit`` are silenced (it still works, and the torch runtimes need no Python classes).
    """
    buffer = io.BytesIO()
    with _exporting(model):
        torch.jit.save(torch.jit.trace(model, example_input), buffer)
    return buffer.getvalue()


def network_suffix(runtime: str) -> str:
    """The file name suffix of a whole network measured on ``runtime``: ``.pt`` (TorchScript) for
    the torch runtimes, ``.onnx`` for every other (ONNX Runtime, on a server, an agent or a browser)."""
    return ".pt" if runtime in TORCHSCRIPT_RUNTIMES else ".onnx"


def network_file(model: nn.Module, example_input: torch.Tensor, runtime: str) -> bytes:
    """The file a device on ``runtime`` times ``model`` from (see :func:`network_suffix`)."""
    if runtime in TORCHSCRIPT_RUNTIMES:
        return model_to_torchscript(model, example_input)
    return model_to_onnx(model, example_input)
