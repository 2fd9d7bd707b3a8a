"""ONNX models in: convert an uploaded ONNX file to a PyTorch network NetAdapt can prune.

``convert_onnx(source)`` reads the file, checks its input and output, converts it with onnx2torch,
runs the file in ONNX Runtime and the converted network in PyTorch on the same random input
(refusing a difference above ``TOLERANCE``), checks that the network runs on a batch (fine-tuning
trains on batches) and that ``NetworkAnalysis`` finds its channel groups. It returns an
``OnnxArchitecture`` and the converted network. Every refusal is an ``OnnxImportError`` whose
message is written for the person who uploaded the file, except an unprunable graph, which raises
the analysis's own ``UnsupportedNetwork`` (it names the layer and says why).

``OnnxArchitecture`` plays the part of ``ArchitectureSpec`` for an ONNX model: ``build()`` gives a
fresh copy of the converted network (the original, before any pruning), ``example_input()``,
``num_classes``, ``in_channels``, ``resolution``, and ``to_dict()`` / ``from_dict()`` for JSON. The
dictionary holds the file's path and the SHA-256 of its content, never the bytes: ``build()``
reads the file again (checking the hash) unless a network of the same content was converted in
this process already. ``architectures.architecture_from_dict`` rebuilds either kind of architecture
from its dictionary (``arch`` is ``"onnx"`` for this one, a built-in name for ``ArchitectureSpec``).

No name from the file reaches code: onnx2torch makes module names of node names, and torch.fx
writes module names unescaped into the Python source it generates and runs. ``_convert``, which
every conversion passes (at upload and in ``build()``, in any process), first replaces every
name with a generated one (``renamed``: layers are ``n0``, ``n1``… by their index in the file,
so rebuilding a file gives the same group names) and refuses files holding subgraphs, local
functions or sparse initializers. ``original_names`` maps the generated layer names back to the
file's names, for display only.

Which exports convert (measured here with torch 2.14.1, onnx 1.23.2, onnx2torch 1.5.15, on our
MobileNetV1 width 0.5 at 32 px, plain_cnn width 0.5 at 28 px and torchvision's mobilenet_v2 at
32 and 224 px; "fresh": weights as built, "trained": batch-norm statistics and biases set to
distinct values as training leaves them; "converts" includes: ONNX Runtime and the converted
network agree within 1e-7, every group analysed, one prune step of every group runs):

=====================================================  ================  ==================
``torch.onnx.export(model, ...)``                      fresh weights     trained weights
=====================================================  ================  ==================
``dynamo=False, opset_version=13`` or ``17``           converts [1]      converts
the same with ``keep_initializers_as_inputs=True``     converts          converts
the same with ``dynamic_axes={"input": {0: "b"}}``     converts [1]      converts
``dynamo=True`` (any ``opset_version``: it writes 20)  refused [2]       refused [2]
=====================================================  ================  ==================

[1] The legacy exporter stores identical tensors once and reads the copies through ``Identity``
    nodes (the all-zero biases of freshly folded batch norms, in every one of the three networks);
    onnx2torch 1.5.15 then fails with a ``KeyError`` on the conv's bias. ``convert_onnx`` turns
    such aliases (and ``Constant`` nodes) back into initializers first, after which these convert;
    ``keep_initializers_as_inputs=True`` avoids the aliases in the first place.
[2] Dynamo exports use ``ReduceMean`` in its opset-18 form (axes as an input), which onnx2torch
    1.5.15 has no converter for, and ``onnx.version_converter`` cannot take them back to opset 17
    (``Reshape`` with ``allowzero=1``). They are refused naming the operator.

Both exporters fold batch norms into the convolutions of a model in eval mode, so an uploaded
network is fine-tuned without batch norm layers; export an eval-mode model as usual.
"""
from __future__ import annotations

import copy
import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar, Union

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from onnx import TensorProto

from .checks import ONNX_TOLERANCE, error_summary, onnx_difference
from .graph import NetworkAnalysis, UnsupportedNetwork
from .models import example_input as _example_input

OnnxSource = Union[bytes, bytearray, str, "os.PathLike[str]", IO[bytes]]

#: ``arch`` of an ONNX architecture in its dictionary (no built-in architecture has this name).
ONNX_ARCH = "onnx"
#: Largest absolute difference allowed between ONNX Runtime and the converted network, scaled by
#: the largest output magnitude when that exceeds 1 (the same rule as the export checks).
TOLERANCE = ONNX_TOLERANCE  # checks.ONNX_TOLERANCE: the one tolerance of every ONNX check
#: Input channels an ONNX model may take: images load as grayscale (1) or RGB (3).
SUPPORTED_CHANNELS = (1, 3)
#: Images in the batch the converted network must run on (fine-tuning trains on batches).
BATCH_CHECK = 2
#: Converted networks kept per process, by content hash (``OnnxArchitecture.build`` copies them).
CACHE_SIZE = 4
#: How many offending names a message lists before saying "and N more".
MAX_LISTED = 6

_FLOAT_NAMES = {value: name.lower() for name, value in TensorProto.DataType.items()}
_ZIP_MAGIC = b"PK\x03\x04"


class OnnxImportError(ValueError):
    """The ONNX file cannot be used; the message says why and is meant for the user."""


# --------------------------------------------------------------------------- the architecture


@dataclass(frozen=True)
class OnnxArchitecture:
    """An uploaded ONNX model as an architecture: what ``ArchitectureSpec`` is for built-ins.

    Two architectures are equal when their file contents (``sha256``) and shapes are; ``path``
    says where the file is and ``data`` may hold its bytes in memory (neither is compared, and
    ``data`` is never written by ``to_dict``).
    """

    arch: ClassVar[str] = ONNX_ARCH
    width: ClassVar[float] = 1.0  # an ONNX model has no width multiplier

    sha256: str
    num_classes: int
    in_channels: int
    resolution: int
    path: str | None = field(default=None, compare=False)
    data: bytes | None = field(default=None, compare=False, repr=False)

    def build(self) -> nn.Module:
        """A fresh copy of the converted network (training mode, like a built-in's ``build``)."""
        template = _cached(self.sha256)
        if template is None:
            model = _read_model(self._bytes())
            template = _convert(model)
            _remember(self.sha256, template)
        return copy.deepcopy(template).train()

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return _example_input(self.in_channels, self.resolution, batch)

    def original_names(self) -> dict[str, str]:
        """{generated node/module name: the file's name for it}, for display (see ``original_names``)."""
        return original_names(self._bytes())

    def to_dict(self) -> dict:
        return {"arch": ONNX_ARCH, "sha256": self.sha256, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "resolution": self.resolution, "path": self.path}

    @classmethod
    def from_dict(cls, data: dict) -> "OnnxArchitecture":
        if data.get("arch") != ONNX_ARCH:
            raise ValueError(f"not an ONNX architecture: arch is {data.get('arch')!r}")
        unknown = set(data) - {"arch", "sha256", "num_classes", "in_channels", "resolution", "path"}
        if unknown:
            raise ValueError(f"unknown keys in an ONNX architecture: {sorted(unknown)}")
        return cls(sha256=str(data["sha256"]), num_classes=int(data["num_classes"]),
                   in_channels=int(data["in_channels"]), resolution=int(data["resolution"]),
                   path=data.get("path"))

    def with_path(self, path: str | os.PathLike[str] | None) -> "OnnxArchitecture":
        """The same architecture, its file now at ``path`` (e.g. once an upload is stored)."""
        return OnnxArchitecture(self.sha256, self.num_classes, self.in_channels, self.resolution,
                                None if path is None else os.fspath(path), self.data)

    def _bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        if not self.path:
            raise OnnxImportError(
                f"the ONNX file of this network (sha256 {self.sha256[:12]}…) is not available: "
                "no path was recorded")
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise OnnxImportError(f"the ONNX file of this network is missing ({self.path})") from None
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise OnnxImportError(
                f"the ONNX file {self.path} has changed since it was converted (its content hash "
                "differs): the network cannot be rebuilt from it")
        return data


_CACHE: OrderedDict[str, nn.Module] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _cached(sha256: str) -> nn.Module | None:
    with _CACHE_LOCK:
        template = _CACHE.get(sha256)
        if template is not None:
            _CACHE.move_to_end(sha256)
        return template


def _remember(sha256: str, module: nn.Module) -> None:
    with _CACHE_LOCK:
        _CACHE[sha256] = copy.deepcopy(module).eval()
        _CACHE.move_to_end(sha256)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)


# --------------------------------------------------------------------------- reading the file


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        shown += f" and {len(items) - MAX_LISTED} more"
    return shown


#: Longest original name kept for display (the rest is cut with "…").
MAX_SHOWN_NAME = 120


def _shown(name: str) -> str:
    """A name from the file as display text: quoted, cut to ``MAX_SHOWN_NAME`` characters."""
    text = name if len(name) <= MAX_SHOWN_NAME else name[:MAX_SHOWN_NAME] + "…"
    return f"'{text}'"


def _read_source(source: OnnxSource) -> tuple[bytes, str | None]:
    """(bytes, path or None) of a path, bytes or a binary file object."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    if hasattr(source, "read"):
        if hasattr(source, "seek"):
            source.seek(0)
        data = source.read()
        return (data if isinstance(data, bytes) else bytes(data)), None
    with open(source, "rb") as handle:
        return handle.read(), os.fspath(source)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise IndexError("varint runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _declared_end(data: bytes) -> int | None:
    """Where the top-level protobuf fields say the message ends (None: not a protobuf message).

    An ONNX file is a ``ModelProto``; walking its top-level fields (without decoding them) tells a
    file cut short, whose last field claims more bytes than remain, from one that is no protobuf.
    """
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if number == 0:
                return None
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 2:
                length, pos = _varint(data, pos)
                pos += length
            elif wire == 5:
                pos += 4
            else:
                return None
    except IndexError:
        return len(data) + 1
    except ValueError:
        return None
    return pos


def _read_model(data: bytes) -> onnx.ModelProto:
    """Parse and validate an ONNX file (OnnxImportError "not a valid ONNX file: ..." if it is not)."""
    if not data:
        raise OnnxImportError("not a valid ONNX file: the file is empty")
    if data.startswith(_ZIP_MAGIC):
        raise OnnxImportError(
            "not a valid ONNX file: it is a zip archive (a PyTorch weights file?). Upload PyTorch "
            "weights as a built-in architecture instead")
    end = _declared_end(data)
    if end is not None and end > len(data) and data[:1] == b"\x08":  # ModelProto starts with ir_version
        raise OnnxImportError(
            f"not a valid ONNX file: it is truncated (it ends after {len(data):,} bytes, inside a "
            "part that needs more); the upload or the export was cut short")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as error:  # protobuf's DecodeError, or anything else the parser raises
        raise OnnxImportError(
            f"not a valid ONNX file: it cannot be decoded as an ONNX model ({error_summary(error)})") from None
    if end is None or not model.HasField("graph") or not model.graph.node:
        raise OnnxImportError("not a valid ONNX file: it holds no ONNX graph")
    try:
        onnx.checker.check_model(model)
    except Exception as error:  # onnx.checker.ValidationError and friends
        raise OnnxImportError(f"not a valid ONNX file: {error_summary(error)}") from None
    external = [t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if external:
        raise OnnxImportError(
            f"the ONNX file keeps {len(external)} weight tensor(s) in separate files (external data, "
            f"e.g. {_listed(external)}); save it as one file (save_as_external_data=False)")
    return model


# --------------------------------------------------------------------------- inputs and outputs


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """Static sizes as ints, named dynamic sizes as strings, unknown sizes as None."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _shape_text(dims: list) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _image_input(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, int, int]:
    """The model's one image input and its (channels, resolution); OnnxImportError otherwise."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        names = [_shown(v.name) for v in inputs]
        raise OnnxImportError(
            f"the model has {len(inputs)} inputs ({_listed(names) or 'none'}); NetAdapt needs exactly "
            "one: a batch of images (N, C, H, W)")
    value = inputs[0]
    if not value.type.HasField("tensor_type"):
        raise OnnxImportError(f"the model's input {_shown(value.name)} is not a tensor")
    elem = value.type.tensor_type.elem_type
    if elem != TensorProto.FLOAT:
        raise OnnxImportError(
            f"the model's input {_shown(value.name)} holds {_FLOAT_NAMES.get(elem, elem)} values; NetAdapt "
            "needs a float32 input: export the model in float32")
    dims = _dims(value)
    if len(dims) != 4:
        raise OnnxImportError(
            f"the model's input {_shown(value.name)} has shape {_shape_text(dims)}; NetAdapt needs a batch "
            "of images, (N, C, H, W) with 4 dimensions")
    batch, channels, height, width = dims
    if not all(isinstance(d, int) and d > 0 for d in (channels, height, width)):
        raise OnnxImportError(
            f"the model's input {_shown(value.name)} has shape {_shape_text(dims)}: its channels, height "
            "and width must be fixed numbers (only the batch may be dynamic)")
    if isinstance(batch, int) and batch not in (0, 1):
        raise OnnxImportError(
            f"the model's input {_shown(value.name)} has a fixed batch of {batch}; export it with batch 1 "
            "or a dynamic batch axis (dynamic_axes={'input': {0: 'batch'}})")
    if channels not in SUPPORTED_CHANNELS:
        raise OnnxImportError(
            f"the model's input has {channels} channels; images load as grayscale (1 channel) or "
            "RGB (3 channels), so the model must take one of those")
    if height != width:
        raise OnnxImportError(
            f"the model's input is {height}x{width} px; NetAdapt needs square images (H = W)")
    return value, channels, height


def _check_single_output(model: onnx.ModelProto) -> None:
    outputs = list(model.graph.output)
    if len(outputs) != 1:
        names = [_shown(v.name) for v in outputs]
        raise OnnxImportError(
            f"the model has {len(outputs)} outputs ({_listed(names)}); NetAdapt needs exactly one: "
            "the class scores (N, classes)")
    dims = _dims(outputs[0])
    if dims and len(dims) != 2:
        raise OnnxImportError(
            f"the model's output {_shown(outputs[0].name)} has shape {_shape_text(dims)}; NetAdapt needs "
            "class scores of shape (N, classes)")


# --------------------------------------------------------------------------- conversion


def _refuse_nested(model: onnx.ModelProto) -> None:
    """OnnxImportError for what ``renamed`` does not rename: local functions and subgraphs.

    A subgraph (the branches of ``If``, the bodies of ``Loop`` and ``Scan``: node attributes of
    type GRAPH or GRAPHS) and a local function hold names of their own; onnx2torch converts
    neither, and refusing them keeps every name the conversion sees one that was renamed.
    """
    if model.functions:
        names = [_shown(f"{f.domain}.{f.name}" if f.domain else f.name) for f in model.functions]
        raise OnnxImportError(
            f"the model defines {len(names)} local function(s) ({_listed(names)}); NetAdapt converts "
            "plain graphs only: inline them first (onnx.inliner.inline_local_functions) or export "
            "without them")
    nested = []
    for node in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) or a.HasField("g")
               or len(a.graphs) for a in node.attribute):
            nested.append(f"{node.op_type} node {_shown(node.name)}" if node.name else node.op_type)
    if nested:
        raise OnnxImportError(
            f"the model holds subgraphs (control flow) in {len(nested)} node(s): {_listed(nested)}; "
            "NetAdapt converts plain graphs only (no If, Loop or Scan): export the model without "
            "data-dependent control flow")
    if len(model.graph.sparse_initializer):
        raise OnnxImportError(
            f"the model stores {len(model.graph.sparse_initializer)} sparse weight tensor(s); "
            "NetAdapt converts dense initializers only: export without sparse tensors")


def renamed(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` whose every name is generated, and {generated node name: original name}.

    onnx2torch turns node names into module names and torch.fx writes module names unescaped into
    the Python source it generates and runs, so no string from the file may reach it: nodes become
    ``n0``, ``n1``… (their index in the file's graph, so a rebuild of the same file gives the same
    names, which jobs compare), every value (graph inputs and outputs, initializers, node inputs
    and outputs, value_info) ``v0``, ``v1``… in order of first appearance, the graph ``main``;
    tensors held in attributes lose their names; ``ai.onnx`` is written as the default domain ``""``
    (onnx2torch prefixes a node's domain to its module name; any other domain has no converter and
    is refused by name). Files with local functions, subgraphs or sparse initializers are refused
    (``_refuse_nested``). The map gives each generated node name the file's own name (or
    "(unnamed <op>)"), for display only: it is user text, to be escaped wherever it is shown.
    """
    _refuse_nested(model)
    model = copy.deepcopy(model)
    graph = model.graph
    values: dict[str, str] = {}

    def value(name: str) -> str:
        if not name:  # an omitted optional input stays omitted
            return ""
        if name not in values:
            values[name] = f"v{len(values)}"
        return values[name]

    for info in graph.input:
        info.name = value(info.name)
    for tensor in graph.initializer:
        tensor.name = value(tensor.name)
    originals: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        generated = f"n{index}"
        originals[generated] = node.name or f"(unnamed {node.op_type})"
        node.name = generated
        if node.domain == "ai.onnx":
            node.domain = ""
        node.input[:] = [value(name) for name in node.input]
        node.output[:] = [value(name) for name in node.output]
        for attribute in node.attribute:
            if attribute.HasField("t"):
                attribute.t.name = ""
            for tensor in attribute.tensors:
                tensor.name = ""
            for sparse in (*([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []),
                           *attribute.sparse_tensors):
                sparse.values.name = sparse.indices.name = ""
    for info in graph.output:
        info.name = value(info.name)
    for info in graph.value_info:
        info.name = value(info.name)
    graph.name = "main"
    del model.training_info[:]  # graphs onnx2torch never reads, with names of their own
    domains = {entry.domain for entry in model.opset_import}
    for entry in model.opset_import:
        if entry.domain == "ai.onnx" and "" not in domains:
            entry.domain = ""
    return model, originals


def original_names(source: OnnxSource) -> dict[str, str]:
    """{generated node name (``n3``): the name the file gives that node}, for display only.

    Module names, channel group names and layer names of a converted network are the generated
    ones; this says which node of the uploaded file each one is. The values are user text (cut
    to ``MAX_SHOWN_NAME`` characters), to be escaped wherever they are shown.
    """
    data, _ = _read_source(source)
    return {generated: name if len(name) <= MAX_SHOWN_NAME else name[:MAX_SHOWN_NAME] + "…"
            for generated, name in renamed(_read_model(data))[1].items()}



def _inline_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose ``Identity`` aliases of initializers and ``Constant`` tensors are initializers.

    The legacy exporter stores identical tensors once and reads the copies through ``Identity``
    nodes; onnx2torch's converters look weights and biases up among the initializers only.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    outputs = {v.name for v in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    kept = []
    for node in graph.node:
        target = node.output[0] if len(node.output) == 1 else None
        if target is None or target in outputs or node.domain not in ("", "ai.onnx"):
            kept.append(node)
            continue
        tensor = None
        if node.op_type == "Identity" and node.input and node.input[0] in initializers:
            tensor = copy.deepcopy(initializers[node.input[0]])
        elif node.op_type == "Constant":
            values = [a for a in node.attribute if a.name == "value"]
            if len(node.attribute) == 1 and values:
                tensor = copy.deepcopy(values[0].t)
        if tensor is None:
            kept.append(node)
            continue
        tensor.name = target
        graph.initializer.append(tensor)
        initializers[target] = tensor
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    if "ai.onnx" in opsets:
        opsets.setdefault("", opsets["ai.onnx"])
    return opsets


def _unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Operators onnx2torch has no converter for, at the opset the file uses."""
    try:
        from onnx2torch.node_converters.registry import get_converter  # onnx2torch: heavy, ONNX uploads only
    except ImportError:  # another onnx2torch layout: the conversion itself will say
        return []
    opsets = _opsets(model)
    missing: dict[str, None] = {}
    for node in model.graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        version = opsets.get(domain)
        name = node.op_type if not domain else f"{domain}.{node.op_type}"
        name = name if len(name) <= MAX_SHOWN_NAME else name[:MAX_SHOWN_NAME] + "…"
        if version is None:
            missing[f"{name} (no opset declared for its domain)"] = None
            continue
        try:
            get_converter(operation_type=node.op_type, version=version, domain=domain)
        except NotImplementedError:
            missing[f"{name} (opset {version})"] = None
    return list(missing)


def _convert(model: onnx.ModelProto) -> nn.Module:
    """onnx2torch's conversion of a parsed model, with its failures worded for the user.

    Every conversion passes here (an upload, ``OnnxArchitecture.build`` in any process), so the
    renaming that keeps the file's strings out of generated code (``renamed``) sits here too.
    """
    from onnx2torch import convert  # heavy, and only ONNX uploads need it

    model, _ = renamed(model)
    model = _inline_constants(model)
    unsupported = _unsupported_ops(model)
    if unsupported:
        hint = ""
        if max(_opsets(model).values(), default=0) >= 18:
            hint = (" The file uses opset 18 or later, as torch.onnx.export(dynamo=True) writes: "
                    "export with dynamo=False, opset_version=17 instead")
        raise OnnxImportError(
            f"the model uses ONNX operator(s) that cannot be converted to PyTorch: "
            f"{_listed(unsupported)}.{hint}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert(model)
    except Exception as error:
        raise OnnxImportError(
            f"the model could not be converted to PyTorch: {type(error).__name__}: "
            f"{error_summary(error)}") from None


def _run_onnxruntime(data: bytes, input_name: str, example: torch.Tensor) -> np.ndarray:
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # no warnings about initializers listed as inputs
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        (output, *_) = session.run(None, {input_name: example.numpy()})
    except Exception as error:
        raise OnnxImportError(
            f"ONNX Runtime cannot run the file: {type(error).__name__}: {error_summary(error)}") from None
    return np.asarray(output)


def _run_torch(module: nn.Module, example: torch.Tensor, what: str) -> torch.Tensor:
    try:
        with torch.no_grad():
            output = module.eval()(example)
    except Exception as error:
        raise OnnxImportError(
            f"{what} fails on a {tuple(example.shape)} input: {type(error).__name__}: "
            f"{error_summary(error)}") from None
    if not isinstance(output, torch.Tensor):
        raise OnnxImportError(f"{what} returns a {type(output).__name__}, not a tensor")
    return output


def _compare(reference: np.ndarray, module: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """The converted network's output, refused unless it matches ONNX Runtime's."""
    output = _run_torch(module, example, "the converted network")
    if tuple(output.shape) != tuple(reference.shape):
        raise OnnxImportError(
            f"the converted network outputs shape {tuple(output.shape)} where ONNX Runtime gives "
            f"{tuple(reference.shape)}")
    error, allowed = onnx_difference(reference, output.numpy())
    if not error <= allowed:
        raise OnnxImportError(
            f"the converted network does not reproduce the ONNX model: its outputs differ from "
            f"ONNX Runtime's by up to {error:.3g} (tolerance {TOLERANCE:g}, times the largest "
            "output when that exceeds 1)")
    return output


def _check_batch(module: nn.Module, arch: OnnxArchitecture, single: torch.Tensor) -> None:
    """The converted network runs on a batch, each image scored as it is alone."""
    batch = arch.example_input(BATCH_CHECK)
    batch[0] = arch.example_input(1)[0]
    try:
        with torch.no_grad():
            output = module.eval()(batch)
    except Exception as error:
        raise OnnxImportError(
            f"the converted network runs only on one image at a time ({type(error).__name__}: "
            f"{error_summary(error)}), but fine-tuning trains on batches: export it with a dynamic "
            "batch axis (dynamic_axes={'input': {0: 'batch'}}) and flatten with torch.flatten(x, 1) "
            "rather than a fixed-size view") from None
    if tuple(output.shape) != (BATCH_CHECK, arch.num_classes):
        raise OnnxImportError(
            f"on a batch of {BATCH_CHECK} images the converted network outputs shape "
            f"{tuple(output.shape)}, not ({BATCH_CHECK}, {arch.num_classes}): fine-tuning trains on "
            "batches, so the batch axis must be free (export with dynamic_axes={'input': {0: "
            "'batch'}} and flatten with torch.flatten(x, 1))")
    error, allowed = onnx_difference(single.numpy(), output[:1].numpy())
    if not error <= allowed:
        raise OnnxImportError(
            f"the converted network scores an image differently inside a batch (by {error:.3g}): "
            "its layers mix the images of a batch, which fine-tuning cannot use")


def convert_onnx(source: OnnxSource, *, analyse: bool = True) -> tuple[OnnxArchitecture, nn.Module]:
    """(architecture, converted network in eval mode) of an ONNX file, checked; see the module doc.

    ``source``: the file's bytes, its path (recorded as the architecture's ``path``) or a binary
    file object. Checks, in order: the file is ONNX (empty, zip, truncated and undecodable files
    each say so); one float32 (N, C, H, W) input with fixed C, H = W and C in ``SUPPORTED_CHANNELS``,
    batch 1 or dynamic; one (N, classes) output; every operator has an onnx2torch converter
    (unsupported ones are named); the conversion succeeds; ONNX Runtime and the converted network
    agree within ``TOLERANCE`` on a random input; the converted network runs on a batch; and,
    unless ``analyse`` is False, ``NetworkAnalysis`` accepts it (``UnsupportedNetwork`` otherwise,
    naming the layer; a caller that analyses the network itself may skip this).
    """
    data, path = _read_source(source)
    model = _read_model(data)
    value, channels, resolution = _image_input(model)
    _check_single_output(model)
    module = _convert(model)

    probe = OnnxArchitecture("", 0, channels, resolution)
    example = probe.example_input()
    reference = _run_onnxruntime(data, value.name, example)
    if reference.ndim != 2 or reference.shape[0] != 1 or reference.shape[1] < 2:
        raise OnnxImportError(
            f"for one image the model outputs shape {tuple(reference.shape)}; NetAdapt needs class "
            "scores of shape (1, classes) with at least 2 classes")
    single = _compare(reference, module, example)
    arch = OnnxArchitecture(hashlib.sha256(data).hexdigest(), int(reference.shape[1]), channels,
                            resolution, path, data)
    _check_batch(module, arch, single)
    if analyse:
        try:
            NetworkAnalysis(module, example)
        except UnsupportedNetwork:  # its message names the layer and why
            raise
        except Exception as error:
            raise OnnxImportError(
                f"the converted network could not be analysed for pruning: {type(error).__name__}: "
                f"{error_summary(error)}") from None
    _remember(arch.sha256, module)
    return arch, module.eval()


def describe(arch: Any) -> str:
    """One line for people: "ONNX model (10 classes, 1-channel 28 px input)"."""
    return (f"ONNX model ({arch.num_classes} classes, {arch.in_channels}-channel "
            f"{arch.resolution} px input)")
