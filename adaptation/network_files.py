"""The files whole networks are measured from: adaptation exports them, devices times them.

A measurement request that asks for whole networks carries one file per network, in the format
the request's runtime runs (``devices.measure.builders.network_file``: ONNX, TorchScript for the
torch runtimes). devices stores, times and removes them; it never builds a network itself.
"""
from __future__ import annotations

from typing import Callable

import torch

from adaptation.netadapt.architectures import build_network
from devices.measure.builders import network_file


class NetworkExportError(ValueError):
    """A network that cannot be written in the format its device's runtime times."""


def export_networks(descriptions: list[dict], example_shape: list[int], runtime: str) -> list[bytes]:
    """Each described network (``describe_network``; fresh weights: latency does not depend on
    them) as the file a device on ``runtime`` times; a NetworkExportError says which failed."""
    example = torch.zeros([int(size) for size in example_shape])
    files = []
    for description in descriptions:
        try:
            files.append(network_file(build_network(description), example, runtime))
        except Exception as error:  # torch's exporters raise many kinds; the user needs the one line
            label = description.get("label", "the network")
            raise NetworkExportError(f"{label} could not be exported for {runtime}: "
                                     f"{type(error).__name__}: {error}") from error
    return files


def network_files(descriptions: list[dict], example_shape: list[int], runtime: str) -> Callable[[], list[bytes]]:
    """``export_networks`` put off until called: ``open_request`` calls it only when it stores a
    new request (a job asking again for what is still open exports nothing)."""
    return lambda: export_networks(descriptions, example_shape, runtime)
