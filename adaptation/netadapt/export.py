"""Exports of an adapted network, each checked to reproduce PyTorch's outputs before it is kept.

- ONNX (legacy exporter, opset 17): what gets deployed; checked in ONNX Runtime.
- TorchScript (traced).
- PyTorch: state dict + architecture spec + channel configuration. Loading rebuilds the original
  architecture, shrinks it to the configuration and loads the weights: no pickled code.
"""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from devices.measure.builders import model_to_onnx

from .checks import ONNX_TOLERANCE, onnx_difference
from .graph import rebuild_pruned
from .architectures import Architecture, architecture_from_dict

FORMATS = ("onnx", "torchscript", "pytorch")
PYTORCH_FORMAT = "netadapt-pytorch/1"


class ExportMismatch(RuntimeError):
    """An exported file does not reproduce the PyTorch model's outputs."""


def _check_close(reference: torch.Tensor, output: np.ndarray, what: str, atol: float) -> float:
    error, allowed = onnx_difference(reference.numpy(), output, atol)
    if not error <= allowed:
        raise ExportMismatch(f"{what} export differs from PyTorch by {error:.3g} (tolerance {atol})")
    return error


def _reference(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(example)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path,
                atol: float = ONNX_TOLERANCE) -> float:
    """Write ONNX; returns the max abs error against PyTorch measured in ONNX Runtime."""
    data = model_to_onnx(model, example)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (output,) = session.run(None, {name: example.numpy()})
    error = _check_close(_reference(model, example), output, "ONNX", atol)
    Path(path).write_bytes(data)
    return error


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path,
                       atol: float = 1e-4) -> float:
    """Write a traced TorchScript module; returns the max abs error of the reloaded file."""
    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings():  # torch 2.14 flags torch.jit as deprecated; it still works
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
    with torch.no_grad():
        output = loaded(example).numpy()
    error = _check_close(_reference(model, example), output, "TorchScript", atol)
    Path(path).write_bytes(buffer.getvalue())
    return error


def export_pytorch(model: nn.Module, spec: Architecture, channels: Mapping[str, int],
                   path: str | Path, atol: float = 1e-5) -> float:
    """Write state dict + spec + channels; returns the max abs error of the rebuilt model."""
    payload = {"format": PYTORCH_FORMAT, "architecture": spec.to_dict(),
               "channels": dict(channels), "state_dict": model.state_dict()}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    buffer.seek(0)
    rebuilt = load_pytorch(buffer)
    example = spec.example_input()
    error = _check_close(_reference(model, example), _reference(rebuilt, example).numpy(),
                         "PyTorch", atol)
    Path(path).write_bytes(buffer.getvalue())
    return error


def load_pytorch(source) -> nn.Module:
    """Rebuild a network written by ``export_pytorch`` (weights-only load: no code runs)."""
    try:
        payload = torch.load(source, weights_only=True)
    except Exception as error:  # the weights-only unpickler fails in many ways on garbage
        raise ValueError(f"not a {PYTORCH_FORMAT} file: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != PYTORCH_FORMAT:
        raise ValueError(f"not a {PYTORCH_FORMAT} file")
    spec = architecture_from_dict(payload["architecture"])
    model = rebuild_pruned(spec.build(), spec.example_input(), payload["channels"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def export_all(model: nn.Module, spec: Architecture, channels: Mapping[str, int],
               folder: str | Path, stem: str) -> dict[str, Path]:
    """All three formats into ``folder``; returns their paths by format."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    example = spec.example_input()
    paths = {"onnx": folder / f"{stem}.onnx", "torchscript": folder / f"{stem}.torchscript.pt",
             "pytorch": folder / f"{stem}.pt"}
    export_onnx(model, example, paths["onnx"])
    export_torchscript(model, example, paths["torchscript"])
    export_pytorch(model, spec, channels, paths["pytorch"])
    return paths
