"""Upload-time checks: can this weights file (or ONNX file) and this network be adapted with NetAdapt?

``load_weights`` turns an uploaded PyTorch file into a network of the chosen architecture, refusing
anything that would need arbitrary code to load; ``load_onnx`` converts an uploaded ONNX file into a
network and its ``OnnxArchitecture`` (``adaptation.netadapt.onnx_import``). ``preflight`` then
does, once and quickly, every step the adaptation will repeat: analyse the channel groups, prune
every group by one step, run the pruned network, export to ONNX and run it in ONNX Runtime.
``check_dataset_fits`` compares a model's input and classes with a dataset's.
``load_upload_architecture`` gives a job what it adapts: the (architecture, network) of a stored
upload of either source.

Every failure is a ``PreflightError`` whose message is meant to be shown to the user as is. This
module imports neither Django nor Celery, so forms, tasks and the CLI can all call it.
"""
from __future__ import annotations

import copy
import hashlib
import io
import os
import pickle
import pickletools
import re
import time
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Union

import onnxruntime as ort
import torch
import torch.nn as nn

from adaptation.netadapt.export import PYTORCH_FORMAT, load_pytorch
from adaptation.netadapt.graph import NetworkAnalysis, UnsupportedNetwork, pruned_copy
from adaptation.netadapt.architectures import Architecture, architecture_from_dict
from adaptation.netadapt.onnx_import import OnnxArchitecture, OnnxImportError, convert_onnx, describe
from adaptation.netadapt.checks import ONNX_TOLERANCE, error_summary, onnx_difference
from adaptation.netadapt.spec import ArchitectureSpec
from devices.measure.builders import model_to_onnx
from devices.measure.tracing import trace_layers

WeightsSource = Union[str, "os.PathLike[str]", IO[bytes]]

#: Keys under which common training checkpoints keep the model's state dict.
CHECKPOINT_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model")
#: Channels removed from each group by the dry-run prune (NetAdapt's usual step).
DRY_RUN_STEP = 8
#: How many offending keys a message lists before saying "and N more".
MAX_LISTED = 5
#: Input resolutions (px, square) a model may have: the upload form's range.
MIN_RESOLUTION, MAX_RESOLUTION = 8, 1024

_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
#: A generated ONNX layer name quoted in a message ("layer 'n3'").
_GENERATED_LAYER = re.compile(r"'(n\d+)'")


class PreflightError(ValueError):
    """The model cannot be adapted; the message says why and is shown to the user verbatim."""


@dataclass
class PreflightReport:
    """What the pre-flight found: the prunable groups and the size of the network."""

    spec: Architecture
    groups: list[dict]   # [{"name", "channels", "out_layers", "in_layers"}]
    macs: int
    params: int
    layers: int          # conv/linear layers traced in one forward pass
    onnx_bytes: int      # size of the exported ONNX model
    seconds: float       # time the whole check took
    notes: list[str] = field(default_factory=list)  # harmless oddities worth showing
    #: ONNX uploads: {generated layer name in ``groups``: the file's own node name}, display only.
    onnx_names: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-friendly form (lists, ints, floats and strings only)."""
        extra = {"onnx_names": dict(self.onnx_names)} if isinstance(self.spec, OnnxArchitecture) else {}
        return {**extra,
            "spec": self.spec.to_dict(),
            "groups": [dict(group) for group in self.groups],
            "macs": self.macs,
            "params": self.params,
            "layers": self.layers,
            "onnx_bytes": self.onnx_bytes,
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- wording helpers


def _describe_spec(spec: Architecture) -> str:
    if isinstance(spec, OnnxArchitecture):
        return describe(spec)
    return (f"{spec.arch} (width {float(spec.width)}, {spec.num_classes} classes, "
            f"{spec.in_channels}-channel {spec.resolution} px input)")


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


def _listed(items: list[str], separator: str = ", ") -> str:
    shown = separator.join(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        shown += f"{separator}and {len(items) - MAX_LISTED} more"
    return shown


# --------------------------------------------------------------------------- reading the file


def _read_source(source: WeightsSource) -> bytes:
    """All bytes of a path or a binary file object (uploads are already size-limited)."""
    if hasattr(source, "read"):
        if hasattr(source, "seek"):
            source.seek(0)
        data = source.read()
        return data if isinstance(data, bytes) else bytes(data)
    with open(source, "rb") as handle:
        return handle.read()


def _pickle_strings(data: bytes) -> tuple[set[str], set[str]]:
    """(globals, string constants) named in the pickle of a torch archive; nothing is executed.

    Only the opcode stream is walked (``pickletools.genops``), so an untrusted file is safe to
    inspect. Returns two empty sets when the pickle cannot be found or parsed.
    """
    pickle_bytes = None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in archive.namelist():
                if name.endswith("data.pkl"):
                    pickle_bytes = archive.read(name)
                    break
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError):
        pickle_bytes = data  # a legacy (non-zip) torch.save file is a bare pickle stream
    if pickle_bytes is None:
        return set(), set()
    globals_, strings, recent = set(), set(), []
    try:
        for opcode, argument, _ in pickletools.genops(pickle_bytes):
            if opcode.name == "GLOBAL" and isinstance(argument, str):
                globals_.add(argument.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(recent) >= 2:
                globals_.add(f"{recent[-2]}.{recent[-1]}")
            elif isinstance(argument, str):
                strings.add(argument)
                recent.append(argument)
    except Exception:  # a truncated or odd stream: report what was seen so far
        pass
    return globals_, strings


def _looks_like_pickled_module(data: bytes, refused_global: str) -> bool:
    """Whether the pickle holds an ``nn.Module`` (its state has ``_modules``/``_parameters``)."""
    _, strings = _pickle_strings(data)
    if {"_modules", "_parameters"} <= strings:
        return True
    return refused_global.startswith("torch.nn.modules.")


def _load_payload(data: bytes, allow_pickled_modules: bool) -> object:
    """``torch.load`` the bytes weights-only; a full unpickle only when explicitly allowed."""
    if not data:
        raise PreflightError("not a PyTorch weights file: the file is empty")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": garbage, reported below
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        match = _UNSUPPORTED_GLOBAL.search(str(error))
        if match is None:
            _refuse_onnx(data)
            raise PreflightError(
                "not a PyTorch weights file: it could not be read as a torch.save() file "
                f"({error_summary(error)})") from None
        refused = match.group(1)
    except Exception as error:  # the weights-only loader fails in many ways on garbage
        _refuse_onnx(data)
        raise PreflightError(
            "not a PyTorch weights file: it could not be read as a torch.save() file "
            f"({type(error).__name__}: {error_summary(error)})") from None

    whole_model = _looks_like_pickled_module(data, refused)
    if not allow_pickled_modules:
        if whole_model:
            raise PreflightError(
                f"the file pickles a whole model object ({refused}); loading it would run arbitrary "
                "code. Save model.state_dict() instead: torch.save(model.state_dict(), 'weights.pt')")
        raise PreflightError(
            f"the file contains a pickled Python object ({refused}) that cannot be loaded without "
            "running arbitrary code. Save only tensors instead: "
            "torch.save(model.state_dict(), 'weights.pt')")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as error:
        raise PreflightError(
            f"the file pickles a model whose class is not available here ({refused}: "
            f"{error_summary(error)}). Save model.state_dict() instead") from None
    except Exception as error:
        raise PreflightError(
            f"the pickled file could not be loaded ({type(error).__name__}: {error_summary(error)})"
        ) from None


def _refuse_onnx(data: bytes) -> None:
    """PreflightError saying so when a file given as PyTorch weights is an ONNX model."""
    if data[:1] != b"\x08":  # an ONNX file (a ModelProto) starts with its IR version
        return
    try:
        import onnx  # only for a file that looks like ONNX

        model = onnx.load_model_from_string(data)
    except Exception:
        return
    if model.HasField("graph") and model.graph.node:
        raise PreflightError(
            "not a PyTorch weights file: it is an ONNX model. Upload it as an ONNX file (source "
            "\"ONNX file\"), not as the weights of a built-in architecture")


# --------------------------------------------------------------------------- state dicts


def _extract_state_dict(payload: object) -> Mapping:
    """The state dict inside a loaded payload (plain, wrapped in a checkpoint, or a module)."""
    if isinstance(payload, nn.Module):
        return payload.state_dict()
    if not isinstance(payload, Mapping):
        raise PreflightError(
            f"the file holds a {type(payload).__name__}, not a state dict; "
            "save model.state_dict() instead")
    for key in CHECKPOINT_KEYS:
        inner = payload.get(key)
        if isinstance(inner, nn.Module):
            return inner.state_dict()
        if isinstance(inner, Mapping) and inner:
            return inner
    if not payload:
        raise PreflightError("the file holds an empty dictionary: there are no weights in it")
    if not any(isinstance(value, torch.Tensor) for value in payload.values()):
        keys = [repr(key) for key in payload]
        raise PreflightError(
            f"the file is a dictionary without weights (keys: {_listed(keys)}); expected a state "
            f"dict, or a checkpoint keeping one under {', '.join(repr(k) for k in CHECKPOINT_KEYS)}")
    return payload


def _strip_data_parallel(state: Mapping, expected: Mapping) -> Mapping:
    """Drop the ``module.`` prefix (nn.DataParallel / DDP) when that makes the keys match."""
    keys = list(state)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        stripped = {k[len("module."):]: v for k, v in state.items()}
        if set(stripped) == set(expected) or not set(state) & set(expected):
            return stripped
    return state


def _check_values(state: Mapping) -> None:
    """Every entry is a finite tensor with a string key."""
    not_tensors = [f"'{key}' ({type(value).__name__})" for key, value in state.items()
                   if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise PreflightError(
            f"the state dict has entries that are not tensors: {_listed(not_tensors)}")
    bad_keys = [repr(key) for key in state if not isinstance(key, str)]
    if bad_keys:
        raise PreflightError(f"the state dict has keys that are not layer names: {_listed(bad_keys)}")
    non_finite = [key for key, value in state.items()
                  if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if non_finite:
        raise PreflightError(f"the weights contain NaN or infinite values in: {_listed(non_finite)}")


def _fit_problems(state: Mapping, expected: Mapping) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches, worded for the user."""
    problems = []
    differing = [key for key in expected
                 if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    # Conv/linear weights first: they say more than the BatchNorm vectors that follow them.
    differing.sort(key=lambda key: expected[key].dim() < 2)
    mismatched = [
        f"layer {key}: file has {_shape(state[key])}, architecture expects {_shape(expected[key])}"
        for key in differing
    ]
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listed(mismatched, '; ')}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    return problems


def _load_netadapt_file(data: bytes, payload: Mapping, spec: Architecture) -> nn.Module:
    """A ``netadapt-pytorch/1`` export: its architecture must be the chosen one."""
    try:
        stored = architecture_from_dict(dict(payload["architecture"]))
    except (KeyError, TypeError, ValueError) as error:
        raise PreflightError(f"the {PYTORCH_FORMAT} file has no valid architecture ({error})") from None
    if stored != spec:
        raise PreflightError(
            f"the {PYTORCH_FORMAT} file was adapted from {_describe_spec(stored)}, "
            f"but {_describe_spec(spec)} was chosen")
    try:
        return load_pytorch(io.BytesIO(data))
    except Exception as error:  # a tampered or corrupt export: name what went wrong
        raise PreflightError(
            f"the {PYTORCH_FORMAT} file could not be rebuilt: {error_summary(error)}") from None


def load_weights(path: WeightsSource, spec: Architecture, *,
                 allow_pickled_modules: bool = False) -> nn.Module:
    """Build ``spec``'s network and load the uploaded weights into it (eval mode).

    Accepts a plain state dict, a checkpoint dict keeping it under ``state_dict``,
    ``model_state_dict`` or ``model`` (keys prefixed ``module.`` by DataParallel are fine), and
    NetAdapt's own ``netadapt-pytorch/1`` export (a pruned network, rebuilt from its channel
    configuration). The file is read with ``torch.load(weights_only=True)``: a file that pickles
    Python objects (typically ``torch.save(model)``) is refused unless ``allow_pickled_modules``,
    which unpickles it in full and takes its ``state_dict()``: only for files from trusted people.

    Raises PreflightError with a message for the user: not a PyTorch file, a pickled model, weights
    that do not fit the architecture (missing / unexpected keys and shape mismatches, first few of
    each), entries that are not tensors, NaN or infinite weights.
    """
    data = _read_source(path)
    payload = _load_payload(data, allow_pickled_modules)
    if isinstance(payload, Mapping) and payload.get("format") == PYTORCH_FORMAT:
        return _load_netadapt_file(data, payload, spec)

    try:
        model = spec.build()
    except ValueError as error:
        raise PreflightError(f"the chosen architecture cannot be built: {error}") from None
    expected = model.state_dict()
    state = _strip_data_parallel(_extract_state_dict(payload), expected)
    _check_values(state)
    problems = _fit_problems(state, expected)
    if problems:
        raise PreflightError(
            f"the weights do not fit {_describe_spec(spec)}. " + ". ".join(problems)
            + ". Check the architecture, width, number of classes and input channels chosen")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # e.g. a dtype that cannot be copied into a float parameter
        raise PreflightError(f"the weights could not be loaded: {error_summary(error)}") from None
    return model.eval()


# --------------------------------------------------------------------------- the dry run


def _dry_run_channels(channels: int) -> int:
    """Channels kept by one dry-run step: 8 fewer, or half below 16 channels (at least 1)."""
    if channels >= 2 * DRY_RUN_STEP:
        return channels - DRY_RUN_STEP
    return max(1, channels // 2)


def _forward(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(example)


def _check_output(output: object, spec: Architecture, what: str) -> None:
    expected = (1, spec.num_classes)
    if not isinstance(output, torch.Tensor):
        raise PreflightError(
            f"{what} returns a {type(output).__name__}, not a tensor of logits of shape {expected}")
    if tuple(output.shape) != expected:
        raise PreflightError(
            f"{what} outputs shape {tuple(output.shape)} for one image; expected {expected} "
            f"({spec.num_classes} classes)")
    if not bool(torch.isfinite(output).all()):
        raise PreflightError(f"{what} outputs NaN or infinite values")


def _prune_and_run(model: nn.Module, example: torch.Tensor, targets: dict[str, int],
                   spec: Architecture) -> nn.Module:
    pruned = pruned_copy(model, example, targets)
    _check_output(_forward(pruned, example), spec, "the pruned network")
    return pruned


def _dry_run(model: nn.Module, example: torch.Tensor, analysis: NetworkAnalysis,
             spec: Architecture) -> None:
    """Prune every group by one step at once; on failure, find the group that breaks."""
    targets = {g.name: _dry_run_channels(g.channels) for g in analysis.groups
               if _dry_run_channels(g.channels) < g.channels}
    if not targets:
        return
    try:
        pruned = _prune_and_run(model, example, targets, spec)
    except Exception as together:
        for name, keep in targets.items():
            try:
                _prune_and_run(model, example, {name: keep}, spec)
            except Exception as error:
                raise PreflightError(
                    f"pruning channel group '{name}' from {analysis.original_config()[name]} to "
                    f"{keep} channels breaks the network: {error_summary(error)}") from None
        raise PreflightError(
            f"pruning every channel group by one step breaks the network: {error_summary(together)}"
        ) from None
    _check_layer_model(pruned, example, analysis, targets)


def _check_layer_model(pruned: nn.Module, example: torch.Tensor, analysis: NetworkAnalysis,
                       targets: dict[str, int]) -> None:
    """The layer shapes NetAdapt predicts for a configuration are those of the pruned network.

    The latency lookup table is built from predicted shapes, so a disagreement would make every
    latency estimate wrong.
    """
    predicted = analysis.signatures(targets)
    traced = trace_layers(pruned.eval(), example)
    if len(predicted) != len(traced):
        raise PreflightError(
            f"the pruned network runs {len(traced)} conv/linear layers where {len(predicted)} were "
            "expected; its layers cannot be modelled for latency")
    for template, expected, actual in zip(analysis.layers, predicted, traced):
        if expected != actual.signature:
            raise PreflightError(
                f"after pruning, layer '{actual.name}' has {actual.signature.in_channels} inputs and "
                f"{actual.signature.out_channels} outputs, but {expected.in_channels} and "
                f"{expected.out_channels} were predicted (layer '{template.name}'); its channels "
                "cannot be modelled for latency")


def _check_onnx(model: nn.Module, example: torch.Tensor, reference: torch.Tensor) -> int:
    """Export to ONNX, run it once in ONNX Runtime, compare with PyTorch; returns its size."""
    try:
        data = model_to_onnx(model, example)
    except Exception as error:
        raise PreflightError(f"ONNX export failed: {type(error).__name__}: {error_summary(error)}") from None
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        (output, *_) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    except Exception as error:
        raise PreflightError(
            f"ONNX Runtime cannot run the exported model: {type(error).__name__}: "
            f"{error_summary(error)}") from None
    expected = reference.numpy()
    if output.shape != expected.shape:
        raise PreflightError(
            f"the ONNX export outputs shape {tuple(output.shape)}, PyTorch {tuple(expected.shape)}")
    error, allowed = onnx_difference(expected, output)
    if not error <= allowed:
        raise PreflightError(
            f"the ONNX export differs from PyTorch by {error:.3g} in ONNX Runtime "
            f"(tolerance {ONNX_TOLERANCE:g}); the deployed model would not match")
    return len(data)


def preflight(model: nn.Module, spec: Architecture) -> PreflightReport:
    """Check, once, every operation NetAdapt will perform on ``model``; ``model`` is not modified.

    Steps: a forward pass on ``spec.example_input()`` giving (1, num_classes) logits; the channel
    group analysis (at least one prunable group); a dry run pruning every group by one step (8
    channels, or half below 16) whose output shape and layer shapes are checked; an ONNX export run
    once in ONNX Runtime and compared with PyTorch. Raises PreflightError naming the failing step.
    """
    start = time.perf_counter()
    model = copy.deepcopy(model).eval()
    example = spec.example_input()
    try:
        reference = _forward(model, example)
    except Exception as error:
        raise PreflightError(
            f"the network fails on a {spec.in_channels}-channel {spec.resolution} px input: "
            f"{type(error).__name__}: {error_summary(error)}") from None
    _check_output(reference, spec, "the network")

    try:
        analysis = NetworkAnalysis(model, example)
    except UnsupportedNetwork as error:
        raise PreflightError(_with_onnx_names(str(error), spec)) from None
    except Exception as error:
        raise PreflightError(
            f"the network could not be analysed for pruning: {type(error).__name__}: "
            f"{error_summary(error)}") from None
    if not analysis.groups:
        raise PreflightError(
            "no prunable channel group: every conv/linear layer's output channels are either the "
            "classes of the output layer or tied to the input, so NetAdapt has nothing to shrink")

    _dry_run(model, example, analysis, spec)
    onnx_bytes = _check_onnx(model, example, reference)

    config = analysis.original_config()
    groups = [{"name": g.name, "channels": g.channels, "out_layers": list(g.out_layers),
               "in_layers": list(g.in_layers)} for g in analysis.groups]
    notes = [f"channel group '{g.name}' has a single channel and cannot be pruned"
             for g in analysis.groups if g.channels <= 1]
    onnx_names = {}
    if isinstance(spec, OnnxArchitecture):
        used = {name for g in groups for name in (g["name"], *g["out_layers"], *g["in_layers"])}
        onnx_names = {name: original for name, original in _onnx_names(spec).items() if name in used}
    return PreflightReport(
        spec=spec, groups=groups, macs=int(analysis.macs(config)), params=int(analysis.params(config)),
        layers=len(analysis.layers), onnx_bytes=onnx_bytes,
        seconds=time.perf_counter() - start, notes=notes, onnx_names=onnx_names)


def _onnx_names(spec: OnnxArchitecture) -> dict[str, str]:
    """The file's node names of a converted ONNX network's layers (empty when it cannot be read)."""
    try:
        return spec.original_names()
    except (OnnxImportError, OSError):
        return {}


def _with_onnx_names(message: str, spec: Architecture) -> str:
    """``message`` with each generated layer name it quotes followed by the ONNX file's name."""
    if not isinstance(spec, OnnxArchitecture):
        return message
    names = _onnx_names(spec)

    def named(match: re.Match) -> str:
        original = names.get(match.group(1))
        return match.group(0) if original is None else f"{match.group(0)} (ONNX node '{original}')"

    return _GENERATED_LAYER.sub(named, message)


# --------------------------------------------------------------------------- datasets


def check_dataset_fits(spec: Architecture, *, in_channels: int, resolution: int,
                       num_classes: int) -> None:
    """PreflightError unless the dataset's channels, resolution and classes are the model's."""
    if (spec.in_channels, spec.resolution, spec.num_classes) == (in_channels, resolution, num_classes):
        return
    raise PreflightError(
        f"the model expects {spec.in_channels}-channel {spec.resolution} px images and "
        f"{spec.num_classes} classes; the dataset has {in_channels}-channel {resolution} px images "
        f"and {num_classes} classes")


# --------------------------------------------------------------------------- ONNX files


def load_onnx(source: WeightsSource | bytes) -> tuple[OnnxArchitecture, nn.Module]:
    """(architecture, network) of an uploaded ONNX file, or PreflightError saying why not.

    ``convert_onnx`` reads, converts and checks the file (see ``adaptation.netadapt.onnx_import``:
    not ONNX, truncated, an input or output NetAdapt cannot use, an unsupported operator, a
    conversion that does not reproduce ONNX Runtime's outputs); its channel groups are left to
    ``preflight``, which analyses the network anyway. The input resolution must be within
    ``MIN_RESOLUTION`` and ``MAX_RESOLUTION``, as for built-in architectures.
    """
    try:
        arch, model = convert_onnx(source, analyse=False)
    except (OnnxImportError, UnsupportedNetwork) as error:
        raise PreflightError(str(error)) from None
    if not MIN_RESOLUTION <= arch.resolution <= MAX_RESOLUTION:
        raise PreflightError(
            f"the model's input is {arch.resolution}x{arch.resolution} px; NetAdapt adapts models of "
            f"{MIN_RESOLUTION} to {MAX_RESOLUTION} px")
    return arch, model


def _stored_file(field_file) -> tuple[bytes, str | None]:
    """(content, local path or None when its storage has no paths) of a stored file."""
    try:
        path = field_file.path
    except (NotImplementedError, AttributeError, ValueError):
        path = None
    if path is not None:
        with open(path, "rb") as handle:
            return handle.read(), path
    with field_file.open("rb") as handle:
        return handle.read(), None


def _load_stored_onnx(upload) -> tuple[OnnxArchitecture, nn.Module]:
    """The network of a stored ONNX upload: rebuilt from the file when it is the one the pre-flight
    accepted (same SHA-256), else converted and checked again."""
    data, path = _stored_file(upload.file)
    recorded = (upload.num_classes, upload.in_channels, upload.resolution)
    checked = dict((upload.preflight or {}).get("spec") or {})
    if checked.get("arch") == "onnx" and checked.get("sha256"):
        if hashlib.sha256(data).hexdigest() != checked["sha256"]:
            raise PreflightError(f"the ONNX file of model '{upload.name}' has changed since its "
                                 "pre-flight check; upload it again")
        try:
            arch = OnnxArchitecture.from_dict({**checked, "path": path})
        except (KeyError, TypeError, ValueError) as error:
            raise PreflightError(f"the pre-flight report of model '{upload.name}' is damaged "
                                 f"({error}); upload it again") from None
        if (arch.num_classes, arch.in_channels, arch.resolution) != recorded:
            raise PreflightError(
                f"model '{upload.name}' says {recorded[0]} classes and {recorded[1]}-channel "
                f"{recorded[2]} px images, but its pre-flight checked an {describe(arch)}")
        arch = OnnxArchitecture(arch.sha256, *recorded, path=path, data=data)
        try:
            return arch, arch.build().eval()
        except OnnxImportError as error:
            raise PreflightError(str(error)) from None
    arch, model = load_onnx(data)
    arch = arch.with_path(path)
    if (arch.num_classes, arch.in_channels, arch.resolution) != recorded:
        raise PreflightError(
            f"the ONNX file of model '{upload.name}' is now an {describe(arch)}, not the "
            f"{recorded[0]}-class {recorded[1]}-channel {recorded[2]} px model that was checked")
    return arch, model


def load_upload_architecture(upload, *, allow_pickled_modules: bool = False
                             ) -> tuple[Architecture, nn.Module]:
    """(architecture, original network in eval mode) of a stored model upload, of either source.

    ``upload`` is an ``adaptation.models.ModelUpload`` (read through its fields only: ``source``,
    ``name``, ``arch``, ``width``, ``num_classes``, ``in_channels``, ``resolution``, ``file``,
    ``preflight``). A built-in architecture is built and its weights loaded (``load_weights``).
    An ONNX file that is still the one the pre-flight accepted (its SHA-256) is converted again
    without repeating the checks (once per process: ``OnnxArchitecture`` keeps the conversion);
    otherwise it is checked in full and must still have the recorded input and classes. Its
    architecture records the stored file's local path, so that other processes (proposal tasks,
    measurement workers, downloads) rebuild pruned networks from it; with a storage that has no
    local paths it lives in this process only. PreflightError (a message for the user) when the
    file is missing or no longer passes.
    """
    try:
        if upload.source == "onnx":
            return _load_stored_onnx(upload)
        spec = ArchitectureSpec(upload.arch, upload.num_classes, upload.in_channels,
                                float(upload.width), upload.resolution)
        with upload.file.open("rb") as handle:
            return spec, load_weights(handle, spec, allow_pickled_modules=allow_pickled_modules)
    except FileNotFoundError:
        raise PreflightError(f"the file of model '{upload.name}' is missing") from None
