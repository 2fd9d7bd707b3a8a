"""Forward-hook tracing of a model into per-call layer signatures.

Fusion rules (what an inference runtime folds into the preceding layer):
a ``BatchNorm2d`` whose input is the very tensor a conv produced fuses as
"bn"; an activation module whose input is the output of the last fused
piece (the conv/linear, or its BN) fuses too. Identity is checked with
``is`` on held references, so in-place activations (which return their
input tensor) work, and freed tensors can never alias a new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from devices.measure.signature import LayerSignature, TracedLayer

_ACTIVATION_TYPES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ReLU, "relu"),
    (nn.ReLU6, "relu6"),
    (nn.Hardswish, "hardswish"),
    (nn.SiLU, "silu"),
    (nn.Hardsigmoid, "hardsigmoid"),
    (nn.Sigmoid, "sigmoid"),
)


def _activation_name(module: nn.Module) -> str | None:
    """Fusion name of a supported activation module, else None."""
    for module_type, name in _ACTIVATION_TYPES:
        if isinstance(module, module_type):
            return name
    return None


@dataclass
class _OpenLayer:
    """A conv/linear call whose trailing fusable ops may still arrive."""

    name: str
    base: dict[str, Any]          # LayerSignature fields except ``fused``
    tail: torch.Tensor            # output of the last fused piece
    parts: list[str] = field(default_factory=list)

    def close(self) -> TracedLayer:
        """Freeze into a TracedLayer."""
        return TracedLayer(self.name, LayerSignature(fused="+".join(self.parts), **self.base))


def _conv_padding(name: str, conv: nn.Conv2d) -> tuple[int, int]:
    """Numeric symmetric padding a Conv2d actually applies; ValueError if not representable."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"layer {name!r}: padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(total % 2 for total in totals):
            raise ValueError(
                f"layer {name!r}: padding='same' pads asymmetrically here (total {totals}); "
                "only symmetric padding can be represented"
            )
        return (totals[0] // 2, totals[1] // 2)
    return (int(conv.padding[0]), int(conv.padding[1]))


def _conv_base(name: str, conv: nn.Conv2d, x: torch.Tensor) -> dict[str, Any]:
    """Signature fields of one Conv2d call on input ``x``."""
    if x.dim() not in (3, 4):
        raise ValueError(f"layer {name!r}: Conv2d input must be 3-D or 4-D, got shape {tuple(x.shape)}")
    batch = int(x.shape[0]) if x.dim() == 4 else 1
    return dict(
        op="conv", in_channels=conv.in_channels, out_channels=conv.out_channels,
        kernel=tuple(conv.kernel_size), stride=tuple(conv.stride),
        padding=_conv_padding(name, conv), dilation=tuple(conv.dilation),
        groups=conv.groups, input_hw=(int(x.shape[-2]), int(x.shape[-1])),
        batch=batch, bias=conv.bias is not None,
    )


def _linear_base(name: str, linear: nn.Linear, x: torch.Tensor) -> dict[str, Any]:
    """Signature fields of one Linear call on a 2-D input ``x``."""
    if x.dim() != 2:
        raise ValueError(f"layer {name!r}: Linear input must be 2-D (batch, features), got shape {tuple(x.shape)}")
    return dict(
        op="linear", in_channels=linear.in_features, out_channels=linear.out_features,
        kernel=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
        input_hw=(1, 1), batch=int(x.shape[0]), bias=linear.bias is not None,
    )


class _Tracer:
    """Collects hook events and applies the fusion rules online."""

    def __init__(self) -> None:
        self.layers: list[TracedLayer] = []
        self.open: _OpenLayer | None = None

    def finish(self) -> list[TracedLayer]:
        """Close the last open layer and return all layers in call order."""
        if self.open is not None:
            self.layers.append(self.open.close())
            self.open = None
        return self.layers

    def on_call(self, name: str, module: nn.Module, x: Any, out: Any) -> None:
        """Handle one hooked module call."""
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            base = _conv_base(name, module, x) if isinstance(module, nn.Conv2d) else _linear_base(name, module, x)
            self.finish()
            self.open = _OpenLayer(name, base, out)
            return
        current = self.open
        if current is None or x is not current.tail:
            return
        if isinstance(module, nn.BatchNorm2d):
            if current.base["op"] == "conv" and not current.parts:
                current.parts.append("bn")
                current.tail = out
            return
        activation = _activation_name(module)
        if activation is not None and current.parts in ([], ["bn"]):  # at most one activation
            current.parts.append(activation)
            current.tail = out


def trace_model_layers(model: nn.Module, example_input: torch.Tensor) -> list[TracedLayer]:
    """Run one eval-mode, no-grad forward pass and return a TracedLayer per Conv2d/Linear call.

    Hooks are removed and every submodule's training flag restored even
    when the forward pass (or a hook) raises.
    """
    hooked_types = (nn.Conv2d, nn.Linear, nn.BatchNorm2d) + tuple(t for t, _ in _ACTIVATION_TYPES)
    tracer = _Tracer()
    training_flags = [(module, module.training) for module in model.modules()]
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            x = args[0] if args else next(iter(kwargs.values()), None)
            tracer.on_call(name, module, x, out)
        return hook

    try:
        for name, module in model.named_modules():
            if isinstance(module, hooked_types):
                handles.append(module.register_forward_hook(make_hook(name), with_kwargs=True))
        model.eval()
        with torch.no_grad():
            model(example_input)
        return tracer.finish()
    finally:
        for handle in handles:
            handle.remove()
        for module, was_training in training_flags:
            module.training = was_training


def trace_layers(model: nn.Module, example_input: torch.Tensor) -> list[TracedLayer]:
    """Signatures of every Conv2d/Linear call of one forward pass, in call order (see the
    module docstring for the fusion rules)."""
    return trace_model_layers(model, example_input)
