"""Either kind of architecture: a built-in (``spec.ArchitectureSpec``) or an uploaded ONNX network
(``onnx_import.OnnxArchitecture``), and the network descriptions measurers rebuild.

Both kinds share one interface (``build()``, ``example_input()``, ``to_dict()``, ``arch``,
``num_classes``, ``in_channels``, ``width``, ``resolution``); ``Architecture`` names it in hints.
What reads a stored dictionary back (``architecture_from_dict``) needs both classes, so it lives
here, above the two modules, and neither of them imports the other.
"""
from __future__ import annotations

from typing import Union

import torch.nn as nn

from .graph import rebuild_pruned
from .onnx_import import ONNX_ARCH, OnnxArchitecture
from .spec import ArchitectureSpec

#: What a job, an export or a measurer treats as "the architecture".
Architecture = Union[ArchitectureSpec, OnnxArchitecture]


def architecture_from_dict(data: dict) -> Architecture:
    """The architecture of a ``to_dict()``, by its ``arch``: ``"onnx"`` for an uploaded network."""
    if isinstance(data, dict) and data.get("arch") == ONNX_ARCH:
        return OnnxArchitecture.from_dict(data)
    return ArchitectureSpec.from_dict(data)


def describe_network(spec: Architecture, channels: dict[str, int], label: str) -> dict:
    """A JSON description of a (pruned) network that rebuilds its architecture elsewhere.

    Latency does not depend on the weights, so a measurer (a device queue's worker, the server
    building ONNX files for an agent) needs only this, never the job's model files.
    """
    return {"label": label, "spec": spec.to_dict(), "channels": dict(channels)}


def build_network(description: dict) -> nn.Module:
    """The network of ``describe_network`` (fresh weights), in eval mode."""
    spec = architecture_from_dict(description["spec"])
    model = spec.build()
    if description.get("channels"):
        model = rebuild_pruned(model, spec.example_input(), description["channels"])
    return model.eval()
