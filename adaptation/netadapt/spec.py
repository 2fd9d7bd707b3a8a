"""A built-in architecture: the arguments that rebuild the original network, so a pruned one can be
rebuilt from a channel configuration (an uploaded ONNX network's is ``onnx_import.OnnxArchitecture``;
``architectures`` reads either back)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

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
    def from_dict(cls, data: dict) -> ArchitectureSpec:
        """The architecture of ``to_dict()``. A stored dictionary may be an uploaded ONNX network's:
        read those with ``architectures.architecture_from_dict``, which knows both kinds."""
        if data.get("arch") == "onnx":
            raise ValueError("an ONNX network's architecture: read it with architecture_from_dict")
        return cls(**data)

