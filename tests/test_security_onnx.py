"""Security probes of ONNX uploads: no string from an ONNX file ever becomes code.

onnx2torch turns ONNX node names into module names and torch.fx writes module names unescaped
into the Python source it generates and runs on every forward pass. Before the fix, a Conv node
named ``x",open(...,"w"))or getattr(self,"y`` created that file from the web process. Every
conversion now renames each node, value, initializer, graph input and output and value_info to
generated identifiers first (``adaptation.netadapt.onnx_import.renamed``). Each probe below puts
a payload that creates a file under the test's tmp path into one field of an otherwise good
export and sends it through one of the ways a file gets converted: the upload API, a worker's
rebuild of a file stored before the fix, the "Measure on..." page, and the agent files endpoint.
The payload avoids dots (onnx2torch turns them into slashes and torch.fx splits names on them),
so it ran as written before the fix.
"""
from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

from adaptation.models import ModelUpload
from adaptation.netadapt import onnx_import
from adaptation.netadapt.onnx_import import OnnxImportError, convert_onnx
from adaptation.netadapt.architectures import architecture_from_dict, build_network
from adaptation.preflight import load_upload_architecture
from adaptation import measure_model
from devices.models import MeasurementRequest
from devices.tasks import measure_request
from tests.stored_files import files_under
from tests.test_onnx_import import PLAIN, image, onnx_bytes, small_net, trained_like

pytestmark = [pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("single_torch_thread", "checks_in_process")]

API = "/api/v1"
#: The fields of an ONNX file that hold names, each probed with the payload.
FIELDS = ["node name", "node output", "initializer", "graph input", "graph output", "value_info"]
GENERATED = re.compile(r"n\d+")


def payload(target: Path) -> str:
    """A name that, written into ``getattr(self, "<name>")`` and run, creates ``target``."""
    codes = ",".join(str(byte) for byte in str(target).encode())
    return f'x",open(str(bytes(({codes})),"ascii"),"w"))or getattr(self,"y'


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.name == old:
            info.name = new
    for tensor in graph.initializer:
        if tensor.name == old:
            tensor.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def hostile_onnx(good: bytes, field: str, name: str) -> bytes:
    """``good`` with ``name`` in ``field`` (of its first Conv node where a node is meant): a file
    that ONNX's checker accepts and ONNX Runtime runs as before."""
    model = onnx.load_from_string(good)
    graph = model.graph
    conv = next(node for node in graph.node if node.op_type == "Conv")
    if field == "node name":
        conv.name = name
    elif field == "node output":
        _rename_value(graph, conv.output[0], name)
    elif field == "initializer":
        _rename_value(graph, conv.input[1], name)
    elif field == "graph input":
        _rename_value(graph, graph.input[0].name, name)
    elif field == "graph output":
        _rename_value(graph, graph.output[0].name, name)
    elif field == "value_info":  # the shapes of intermediate values, as many exporters write them
        model = onnx.shape_inference.infer_shapes(model)
        assert model.graph.value_info
        _rename_value(model.graph, model.graph.value_info[0].name, name)
    else:
        raise ValueError(field)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def assert_generated_names(module: nn.Module, name: str) -> None:
    """Every module of a converted network has a generated name; its code holds none of ``name``."""
    for module_name, _ in module.named_modules():
        first = module_name.split(".")[0]
        assert module_name == "" or first == "initializers" or GENERATED.fullmatch(first), module_name
    assert name not in module.code and "open(" not in module.code


def assert_generated_report(report: dict) -> None:
    for group in report["groups"]:
        for layer in (group["name"], *group["out_layers"], *group["in_layers"]):
            assert GENERATED.fullmatch(layer), layer


@pytest.fixture(scope="module")
def good_onnx() -> bytes:
    torch.manual_seed(0)
    return onnx_bytes(trained_like(PLAIN.build()).eval(), PLAIN.example_input(),
                      dynamic_axes={"input": {0: "batch"}})


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture(autouse=True)
def _fresh_conversions():
    """Each probe converts its file itself: no network kept from another test."""
    onnx_import._CACHE.clear()
    measure_model._trace.cache_clear()


@pytest.fixture(autouse=True)
def short_protocol(settings):
    settings.MEASURE_PROTOCOL = {"warmup": 1, "rounds": 2, "runs_per_round": 5}


def upload(api, content: bytes, filename: str = "net.onnx") -> dict:
    """The model as the API shows it once checked: uploaded (202, checking), the check run in this
    process as it is sent (``checks_in_process``), then read back."""
    response = api.post(f"{API}/models", {"file": SimpleUploadedFile(filename, content)}, format="multipart")
    assert response.status_code == 202, response.content
    return api.get(f"{API}/models/{response.json()['id']}").json()


def stored_before_the_fix(api, good: bytes, hostile: bytes) -> ModelUpload:
    """A model whose stored file is ``hostile``, recorded as the pre-flight before the fix left it.

    This one state cannot be reached through the entry point: it is what the code *before* this
    fix produced (a hostile file accepted and recorded with its hash), and today's upload converts
    every file with the fix in place, which is what the other probes test. So a good file is
    uploaded through the API and its stored content then replaced by the hostile one, with the
    hash the old pre-flight would have recorded, as on a server that is upgraded with such files
    on disk. Whatever rebuilds it next must rename its names too.
    """
    response = upload(api, good)
    assert response["status"] == "ready", response
    model = ModelUpload.objects.get(pk=response["id"])
    Path(model.file.path).write_bytes(hostile)
    report = model.preflight
    report["spec"]["sha256"] = hashlib.sha256(hostile).hexdigest()
    ModelUpload.objects.filter(pk=model.pk).update(preflight=report)
    return ModelUpload.objects.get(pk=model.pk)


# --------------------------------------------------------------------------- the upload API


@pytest.mark.services
@pytest.mark.parametrize("field", FIELDS)
def test_a_hostile_name_uploaded_through_the_api_runs_nothing(api, owner, media, tmp_path, good_onnx, field):
    target = tmp_path / "created_by_upload"
    name = payload(target)
    response = upload(api, hostile_onnx(good_onnx, field, name))
    assert not target.exists()
    # Converted with generated names: accepted like the good file, nothing of the name in any layer.
    assert response["status"] == "ready", response
    body = response
    assert body["status"] == "ready" and len(body["preflight"]["groups"]) == 7
    assert_generated_report(body["preflight"])
    if field == "node name":  # the file's own name is kept for display only (its first 120 characters)
        assert body["preflight"]["onnx_names"]["n0"] == name[:onnx_import.MAX_SHOWN_NAME] + "…"
    else:
        assert name not in str(body["preflight"])
    # A job worker converts the stored file again: still nothing runs.
    onnx_import._CACHE.clear()
    arch, model = load_upload_architecture(ModelUpload.objects.get(pk=body["id"]))
    with torch.no_grad():
        model(arch.example_input(2))
    assert_generated_names(model, name)
    assert not target.exists()


def test_a_hostile_node_name_is_shown_escaped_on_the_model_page(api, owner_client, media, good_onnx):
    name = '<script>alert("node")</script>'
    response = upload(api, hostile_onnx(good_onnx, "node name", name))
    assert response["status"] == "ready", response
    page = owner_client.get(reverse("model_detail", args=[response["id"]])).content.decode()
    assert "&lt;script&gt;alert(&quot;node&quot;)&lt;/script&gt;" in page and name not in page
    assert "<th>ONNX node</th>" in page


def test_a_hostile_input_name_in_a_refusal_is_quoted_and_cut(api, media):
    """A refusal quotes the file's input name as text, at most 120 characters of it."""
    good = onnx_bytes(small_net(channels=4), image(4))
    name = "=cmd|' /C calc'!A0" + "x" * 500
    response = upload(api, hostile_onnx(good, "graph input", name))
    assert response["status"] == "rejected", response
    message = response["error"]
    assert "the model's input has 4 channels" in message
    assert "x" * 121 not in message and files_under(media) == []


@pytest.mark.parametrize("field", ["op_type", "domain"])
def test_a_hostile_operator_or_domain_is_refused_as_unknown(api, media, tmp_path, good_onnx, field):
    """onnx2torch picks a converter by (domain, op_type) from its registry, whose only domain is the
    default one; a node's domain is otherwise prefixed to its module name. Any other string is
    refused before conversion, as text in the message."""
    target = tmp_path / "created_by_operator"
    model = onnx.load_from_string(good_onnx)
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    conv.name = ""  # an unnamed node's module would be named after its op_type
    if field == "op_type":
        conv.op_type = payload(target)
    else:
        conv.domain = payload(target)
        model.opset_import.append(onnx.helper.make_opsetid(conv.domain, 1))
    response = upload(api, model.SerializeToString())
    assert response["status"] == "rejected", response
    message = response["error"]
    expected = {"op_type": "not a valid ONNX file: No Op registered for x\"",
                "domain": "the model uses ONNX operator(s) that cannot be converted to PyTorch: x\""}
    assert expected[field] in message and len(message) < 500, message
    assert not target.exists() and files_under(media) == []


# --------------------------------------------------------------------------- stored before the fix


@pytest.mark.services
@pytest.mark.parametrize("field", FIELDS)
def test_a_hostile_file_stored_before_the_fix_is_renamed_when_a_worker_rebuilds_it(
        api, media, tmp_path, good_onnx, field):
    target = tmp_path / "created_by_worker"
    name = payload(target)
    hostile = hostile_onnx(good_onnx, field, name)
    model = stored_before_the_fix(api, good_onnx, hostile)
    # What a job worker does: the stored hash matches, so the file is rebuilt without the checks.
    arch, network = load_upload_architecture(model)
    assert arch.sha256 == model.preflight["spec"]["sha256"]
    with torch.no_grad():
        output = network(arch.example_input(2))
    assert_generated_names(network, name)
    # What proposal and measurement workers do: the architecture's dictionary, in a fresh process.
    onnx_import._CACHE.clear()
    rebuilt = architecture_from_dict(arch.to_dict()).build().eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(arch.example_input(2)), output)
    assert_generated_names(rebuilt, name)
    assert not target.exists()


# --------------------------------------------------------------------------- Measure on...


@pytest.mark.services
@pytest.mark.parametrize("field", FIELDS)
def test_a_hostile_file_stored_before_the_fix_is_measured_without_running_its_names(
        api, owner_client, media, tmp_path, good_onnx, system_device, workers, field):
    target = tmp_path / "created_by_measure"
    name = payload(target)
    model = stored_before_the_fix(api, good_onnx, hostile_onnx(good_onnx, field, name))
    # The page traces the network in the web process...
    response = owner_client.post(reverse("measurement_start"), {"model": model.pk, "device": system_device.pk})
    assert not target.exists()
    measurement = MeasurementRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("measurement_detail",
                                                                           args=[measurement.pk])
    # ... and the device's worker converts the stored file again to time it.
    onnx_import._CACHE.clear()
    assert measure_request(workers.requests.pop()) == "done"
    page = owner_client.get(response["Location"]).content.decode()
    layers = re.findall(r'<tr data-layer="([^"]+)">', page)
    assert len(layers) == 8 and all(GENERATED.fullmatch(layer) for layer in layers)
    assert not target.exists()


# --------------------------------------------------------------------------- the agent files


@pytest.mark.services
def test_the_agent_files_of_a_hostile_stored_file_run_nothing(api, owner_client, media, tmp_path, good_onnx):
    """An agent device added and paired as users do; the server builds its request's files from the
    stored file (converted again, as in a process that has not seen it)."""
    target = tmp_path / "created_by_agent_files"
    name = payload(target)
    model = stored_before_the_fix(api, good_onnx, hostile_onnx(good_onnx, "node name", name))
    added = owner_client.post(reverse("device_add"), {"name": "Pi", "runtime": "onnxruntime", "threads": 1,
                                                      "description": ""})
    code = re.search(r"data-pairing-code>([^<]+)<", added.content.decode()).group(1).strip()
    paired = Client().post(f"{API}/agent/pair", {"code": code, "facts": {"onnxruntime": ort.__version__}},
                           content_type="application/json")
    assert paired.status_code == 200, paired.content
    device, token = paired.json()["device"], paired.json()["token"]
    started = api.post(f"{API}/devices/{device}/measure", {"model": model.pk}, format="json")
    assert started.status_code == 202, started.content
    assert not target.exists()

    onnx_import._CACHE.clear()
    files = Client().get(f"{API}/agent/requests/{started.json()['id']}/files", HTTP_AUTHORIZATION=f"Token {token}")
    assert files.status_code == 200, files.content
    assert not target.exists()
    archive = zipfile.ZipFile(io.BytesIO(files.content))
    network = onnx.load_from_string(archive.read("networks/0.onnx"))
    assert all(GENERATED.match(node.name.lstrip("/")) for node in network.graph.node if node.op_type == "Conv")
    session = ort.InferenceSession(archive.read("networks/0.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, 16, 16), np.float32)})
    assert out.shape == (1, 10)


# --------------------------------------------------------------------------- refused graphs


def test_a_graph_with_subgraphs_is_refused_naming_them(api, media):
    data = onnx_bytes(small_net(nn.LocalResponseNorm(3)), image())  # exports an If node with branches
    response = upload(api, data)
    assert response["status"] == "rejected", response
    message = response["error"]
    assert "holds subgraphs (control flow) in 1 node(s): If node '/1/If'" in message
    assert files_under(media) == []


def local_function_onnx(good: bytes, name: str) -> bytes:
    """``good`` with its first Relu moved into a local function whose node is named ``name``."""
    model = onnx.load_from_string(good)
    relu = next(node for node in model.graph.node if node.op_type == "Relu")
    relu.op_type, relu.domain = "Activation", "local"
    model.functions.append(onnx.helper.make_function(
        "local", "Activation", ["X"], ["Y"], [onnx.helper.make_node("Relu", ["X"], ["Y"], name=name)],
        [onnx.helper.make_opsetid("", 17)]))
    model.opset_import.append(onnx.helper.make_opsetid("local", 1))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_graph_with_local_functions_is_refused_naming_them(api, media, tmp_path, good_onnx):
    target = tmp_path / "created_by_function"
    data = local_function_onnx(good_onnx, payload(target))
    assert ort.InferenceSession(data, providers=["CPUExecutionProvider"])  # a valid file
    response = upload(api, data)
    assert response["status"] == "rejected", response
    message = response["error"]
    assert "the model defines 1 local function(s) ('local.Activation')" in message
    assert "inline_local_functions" in message
    assert not target.exists() and files_under(media) == []


def test_the_conversion_itself_refuses_what_it_does_not_rename(good_onnx):
    """The refusals sit in the conversion every path uses, not only in the upload checks."""
    model = onnx.load_from_string(local_function_onnx(good_onnx, "f"))
    with pytest.raises(OnnxImportError, match="local function"):
        onnx_import._convert(model)
    model = onnx.load_from_string(onnx_bytes(small_net(nn.LocalResponseNorm(3)), image()))
    with pytest.raises(OnnxImportError, match="holds subgraphs"):
        onnx_import._convert(model)


# --------------------------------------------------------------------------- still converts


def test_a_normal_export_still_converts_and_reproduces_onnx_runtime(api, media, good_onnx):
    response = upload(api, good_onnx)
    assert response["status"] == "ready", response
    report = response["preflight"]
    assert_generated_report(report)
    assert "/features/features.0/features.0.0/Conv" in report["onnx_names"].values()
    onnx_import._CACHE.clear()
    arch, model = load_upload_architecture(ModelUpload.objects.get())
    example = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    session = ort.InferenceSession(good_onnx, providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {"input": example.numpy()})
    with torch.no_grad():
        assert np.abs(model(example).numpy() - reference).max() <= onnx_import.TOLERANCE
    # The same file gives the same names on every rebuild: jobs resume and compare by them.
    onnx_import._CACHE.clear()
    again = architecture_from_dict(arch.to_dict()).build()
    assert [n for n, _ in again.named_modules()] == [n for n, _ in model.named_modules()]
    assert {g["name"] for g in report["groups"]} <= {n for n, _ in again.named_modules()}
    _, converted = convert_onnx(good_onnx)
    assert_generated_names(converted, "/features")
    assert isinstance(build_network({"label": "x", "spec": arch.to_dict(), "channels": {}}), nn.Module)
