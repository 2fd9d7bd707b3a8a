"""What an architecture is, so a pruned network can be rebuilt from a channel configuration."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .graph import rebuild_pruned
from .models import build_model, example_input


@dataclass(frozen=True)
class ArchitectureSpec:
    """The arguments of ``build_model``: enough to rebuild the original network."""

    arch: str
    num_classes: int
    in_channels: int = 3
    width: float = 1.0
    resolution: int = 224

    def build(self) -> nn.Module:
        return build_model(self.arch, self.num_classes, self.in_channels, self.width, self.resolution)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return example_input(self.in_channels, self.resolution, batch)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ArchitectureSpec":
        """The architecture of ``to_dict()``; an uploaded ONNX network's (``arch`` "onnx") is an
        ``OnnxArchitecture`` with the same interface, so every reader handles both."""
        if data.get("arch") == "onnx":
            from .onnx_import import OnnxArchitecture  # onnx2torch: only for ONNX uploads
            return OnnxArchitecture.from_dict(data)
        return cls(**data)


def describe_network(spec: ArchitectureSpec, channels: dict[str, int], label: str) -> dict:
    """A JSON description of a (pruned) network that rebuilds its architecture elsewhere.

    Latency does not depend on the weights, so a measurer (a device queue's worker, the server
    building ONNX files for an agent) needs only this, never the job's model files.
    """
    return {"label": label, "spec": spec.to_dict(), "channels": dict(channels)}


def build_network(description: dict) -> nn.Module:
    """The network of ``describe_network`` (fresh weights), in eval mode."""
    spec = ArchitectureSpec.from_dict(description["spec"])
    model = spec.build()
    if description.get("channels"):
        model = rebuild_pruned(model, spec.example_input(), description["channels"])
    return model.eval()
