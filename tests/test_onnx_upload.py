"""ONNX model uploads through the page and the REST API: the pre-flight reads the model's input and
classes from the file, each bad file is rejected with its own message and leaves no file (the
checks run in this process as they are sent: ``checks_in_process``), and ``load_upload_architecture`` gives a job the network of a stored upload of either source.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from adaptation.models import ModelUpload
from adaptation.netadapt import onnx_import
from adaptation.netadapt.architectures import architecture_from_dict
from adaptation.netadapt.onnx_import import OnnxArchitecture
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation.preflight import PreflightError, load_upload_architecture
from tests.stored_files import files_under, torch_bytes
from tests.test_onnx_import import (PLAIN, FixedBatchNet, GroupedConvNet, Triu, image, onnx_bytes,
                                    small_net, trained_like)
from tests.user_objects import queue_job, upload_model

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("single_torch_thread", "checks_in_process")]

API = "/api/v1"


@pytest.fixture(scope="module")
def plain_cnn() -> nn.Module:
    torch.manual_seed(0)
    return trained_like(PLAIN.build()).eval()


@pytest.fixture(scope="module")
def good_onnx(plain_cnn) -> bytes:
    return onnx_bytes(plain_cnn, PLAIN.example_input(), dynamic_axes={"input": {0: "batch"}})


@pytest.fixture(scope="module")
def wide_onnx() -> bytes:
    """``good_onnx`` at width 1: slow enough (tenths of a ms) for the server's per-layer table. At
    width 0.25 (0.02-0.05 ms) every layer's entry is mostly call overhead, and a 4% cut was out of
    reach of every group in about one run in four."""
    torch.manual_seed(0)
    wide = ArchitectureSpec("plain_cnn", num_classes=10, in_channels=1, width=1.0, resolution=16)
    return onnx_bytes(trained_like(wide.build()).eval(), wide.example_input(), dynamic_axes={"input": {0: "batch"}})


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


def page_data(content: bytes, filename: str = "net.onnx", **fields) -> dict:
    """What the upload page posts for an ONNX file (the built-in fields as the browser sends them)."""
    data = {"source": "onnx", "name": "", "arch": "mobilenet_v1", "width": "1.0", "num_classes": "",
            "in_channels": "3", "resolution": "32", **fields}
    data["file"] = SimpleUploadedFile(filename, content)
    return data


def bad_files(good: bytes) -> dict[str, tuple[bytes, str]]:
    """(file content, message) of every way an ONNX upload is rejected."""
    return {
        "not ONNX": (b"these are not weights", "not a valid ONNX file: it cannot be decoded"),
        "PyTorch weights": (torch_bytes(PLAIN.build().state_dict()), "not a valid ONNX file: it is a zip archive"),
        "truncated": (good[: len(good) * 2 // 3], "not a valid ONNX file: it is truncated"),
        "unsupported operator": (onnx_bytes(small_net(Triu()), image()),
                                 "cannot be converted to PyTorch: Trilu (opset 17)"),
        "unprunable graph": (onnx_bytes(GroupedConvNet(), image()), "is a grouped convolution (groups=2)"),
        "4-channel input": (onnx_bytes(small_net(channels=4), image(4)), "the model's input has 4 channels"),
        "non-image input": (onnx_bytes(nn.Sequential(nn.Linear(12, 10)), torch.randn(1, 12)),
                            "needs a batch of images, (N, C, H, W)"),
        "too small": (onnx_bytes(small_net(), image(1, 4)), "the model's input is 4x4 px"),
        "one image at a time": (onnx_bytes(FixedBatchNet(), image()), "runs only on one image at a time"),
    }


@pytest.fixture(scope="module")
def bad(good_onnx) -> dict[str, tuple[bytes, str]]:
    torch.manual_seed(0)
    return bad_files(good_onnx)


def rejected_by_the_page(client, data: dict) -> str:
    """Upload ``data`` through the page; the model's page shows it rejected: its error."""
    response = client.post(reverse("model_upload"), data)
    model = ModelUpload.objects.get()
    assert response.status_code == 302 and model.status == "rejected" and not model.file.name
    page = client.get(response.url).content.decode().replace("&#x27;", "'").replace("&quot;", '"')
    assert "Rejected by the pre-flight check" in page and model.error in page
    return model.error


# --------------------------------------------------------------------------- the page


def test_the_upload_page_offers_onnx_and_says_which_exports_work(owner_client, media):
    page = owner_client.get(reverse("model_upload")).content.decode()
    assert 'name="source" value="onnx"' in page and 'data-source-fields="builtin"' in page
    assert "which exports work" in page
    for text in ("keep_initializers_as_inputs=True", "dynamo=True", "ReduceMean", "opset_version=17"):
        assert text in page


def test_the_page_uploads_an_onnx_model(owner_client, owner, media, good_onnx):
    response = owner_client.post(reverse("model_upload"), page_data(good_onnx))
    model = ModelUpload.objects.get()
    assert response.status_code == 302 and response.url == reverse("model_detail", args=[model.pk])
    assert (model.source, model.status, model.error, model.name) == ("onnx", "ready", "", "net")
    # Read from the file, whatever the hidden built-in fields said.
    assert (model.arch, model.width, model.num_classes, model.in_channels, model.resolution) == ("", 1.0, 10, 1, 16)
    report = model.preflight
    assert report["spec"]["arch"] == "onnx" and len(report["spec"]["sha256"]) == 64
    assert len(report["groups"]) == 7 and report["macs"] > 0 and report["params"] > 0
    assert report["onnx_bytes"] > 0
    assert files_under(media) == [f"models/{owner.pk}/net.onnx"]
    assert Path(model.file.path).read_bytes() == good_onnx

    page = owner_client.get(response.url).content.decode()
    assert "status-ready" in page and "ONNX file, converted to PyTorch" in page
    assert report["groups"][0]["name"] in page
    listing = owner_client.get(reverse("model_list")).content.decode()
    assert "<td>ONNX</td>" in listing


@pytest.mark.parametrize("case", ["not ONNX", "PyTorch weights", "truncated", "unsupported operator",
                                  "unprunable graph", "4-channel input", "non-image input", "too small",
                                  "one image at a time"])
def test_the_page_rejects_a_bad_onnx_file_and_keeps_no_file(owner_client, media, bad, case):
    content, message = bad[case]
    error = rejected_by_the_page(owner_client, page_data(content))
    assert message in error, error
    assert files_under(media) == []


def test_the_page_rejects_a_conversion_that_differs_from_onnx_runtime(owner_client, media, good_onnx,
                                                                      mismatching_conversion):
    error = rejected_by_the_page(owner_client, page_data(good_onnx))
    assert "does not reproduce the ONNX model" in error and "by up to 0.5 (tolerance 0.0001" in error
    assert files_under(media) == []


def test_an_onnx_file_sent_as_builtin_weights_is_pointed_to_the_onnx_source(owner_client, media, good_onnx):
    fields = {"source": "builtin", "arch": "plain_cnn", "width": "0.25", "num_classes": "10",
              "in_channels": "1", "resolution": "16"}
    response = owner_client.post(reverse("model_upload"), page_data(good_onnx, **fields))
    assert "net.onnx is an ONNX file" in response.context["form"].errors["source"][0]
    assert not ModelUpload.objects.exists()
    # Named otherwise, the weights loader recognises the content.
    error = rejected_by_the_page(owner_client, page_data(good_onnx, "net.pt", **fields))
    assert "it is an ONNX model. Upload it as an ONNX file" in error
    assert files_under(media) == []


def test_builtin_uploads_still_require_their_fields(owner_client, media):
    data = page_data(b"weights", "net.pt", source="builtin", num_classes="", resolution="")
    response = owner_client.post(reverse("model_upload"), data)
    errors = response.context["form"].errors
    assert errors["num_classes"] == ["This field is required."] == errors["resolution"]
    assert not ModelUpload.objects.exists()


# --------------------------------------------------------------------------- the API


def test_the_api_uploads_an_onnx_file_without_being_told_its_source(api, owner, media, good_onnx):
    response = api.post(f"{API}/models", {"file": SimpleUploadedFile("plain.onnx", good_onnx)},
                        format="multipart")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "checking"
    body = api.get(f"{API}/models/{response.json()['id']}").json()
    assert (body["source"], body["status"], body["name"], body["arch"]) == ("onnx", "ready", "plain", "")
    assert (body["num_classes"], body["in_channels"], body["resolution"]) == (10, 1, 16)
    assert len(body["preflight"]["groups"]) == 7
    assert files_under(media) == [f"models/{owner.pk}/plain.onnx"]


@pytest.mark.parametrize("case", ["truncated", "unsupported operator", "unprunable graph", "4-channel input"])
def test_the_api_rejects_a_bad_onnx_file_and_keeps_no_file(api, media, bad, case):
    content, message = bad[case]
    response = api.post(f"{API}/models", {"source": "onnx", "file": SimpleUploadedFile("net.bin", content)},
                        format="multipart")
    assert response.status_code == 202
    body = api.get(f"{API}/models/{response.json()['id']}").json()
    assert body["status"] == "rejected" and message in body["error"]
    assert files_under(media) == []


def test_the_schema_documents_the_source(api):
    schema = api.get(f"{API}/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    schemas = schema["components"]["schemas"]
    source = schemas["ModelUploadRequest"]["properties"]["source"]
    assert "left out: ONNX when the file name ends in .onnx" in source["description"]
    assert schemas[source["allOf"][0]["$ref"].rsplit("/", 1)[1]]["enum"] == ["builtin", "onnx"]
    assert schemas["ModelUploadRequest"]["required"] == ["file"]


# --------------------------------------------------------------------------- what a job loads


def test_a_job_loads_a_stored_onnx_upload(owner_client, owner, media, good_onnx, plain_cnn):
    owner_client.post(reverse("model_upload"), page_data(good_onnx))
    upload = ModelUpload.objects.get()
    onnx_import._CACHE.clear()  # as in a worker process: converted again from the stored file
    arch, model = load_upload_architecture(upload)
    assert isinstance(arch, OnnxArchitecture) and not model.training
    assert arch.to_dict() == {**upload.preflight["spec"], "path": upload.file.path}
    with torch.no_grad():
        assert torch.allclose(model(arch.example_input(2)), plain_cnn(arch.example_input(2)), atol=1e-4)
    # What a job records (export_pytorch's architecture, a measurement request's description)
    # rebuilds the network in any process.
    onnx_import._CACHE.clear()
    rebuilt = architecture_from_dict(arch.to_dict()).build().eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(arch.example_input()), model(arch.example_input()))


def test_a_stored_onnx_upload_without_its_recorded_hash_is_checked_in_full(owner_client, media, good_onnx):
    owner_client.post(reverse("model_upload"), page_data(good_onnx))
    ModelUpload.objects.update(preflight={})
    arch, _ = load_upload_architecture(ModelUpload.objects.get())
    assert arch.num_classes == 10 and arch.path == ModelUpload.objects.get().file.path


def test_a_job_refuses_a_stored_onnx_upload_that_changed(owner_client, media, good_onnx):
    owner_client.post(reverse("model_upload"), page_data(good_onnx))
    upload = ModelUpload.objects.get()
    ModelUpload.objects.update(num_classes=5)
    with pytest.raises(PreflightError, match="says 5 classes .* but its pre-flight checked an ONNX model"):
        load_upload_architecture(ModelUpload.objects.get())
    Path(upload.file.path).write_bytes(good_onnx + b"\x00")
    with pytest.raises(PreflightError, match="has changed since its pre-flight check"):
        load_upload_architecture(upload)
    Path(upload.file.path).unlink()
    with pytest.raises(PreflightError, match="the file of model 'net' is missing"):
        load_upload_architecture(upload)


def test_a_job_loads_a_stored_builtin_upload(owner, media):
    spec = ArchitectureSpec("plain_cnn", num_classes=3, in_channels=1, width=0.25, resolution=8)
    torch.manual_seed(0)
    original = spec.build().eval()
    upload = upload_model(owner, spec, torch_bytes(original.state_dict()), name="tiny")
    arch, model = load_upload_architecture(upload)
    assert arch == spec
    with torch.no_grad():
        assert torch.equal(model(spec.example_input()), original(spec.example_input()))


@pytest.mark.django_db(transaction=True)
def test_an_onnx_upload_is_adapted_for_latency_and_downloads_as_onnx(
        owner_client, owner, media, wide_onnx, workers, system_device, digits_dataset):
    import numpy as np
    import onnxruntime as ort

    from adaptation.job_files import JobFiles
    from adaptation.models import Iteration
    from devices.models import MeasurementRequest

    owner_client.post(reverse("model_upload"), page_data(wide_onnx))
    upload = ModelUpload.objects.get()
    assert upload.status == "ready", upload.error
    job = queue_job(owner, upload, digits_dataset, system_device, {
        "metric": "latency", "budget": 0.95, "initial_reduction": 0.04, "decay": 0.9, "short_term_steps": 3,
        "long_term_epochs": 0, "batch_size": 64, "max_iterations": 1, "holdout": 0.15, "channel_step": 16})
    onnx_import._CACHE.clear()  # the worker converts the stored file again
    job = workers.drive(job)
    assert job.status == "finished", job.error
    # The device measured networks rebuilt from the ONNX architecture's description.
    networks = [n for r in MeasurementRequest.objects.filter(job_id=job.pk) for n in r.networks]
    assert networks and all(n["spec"]["arch"] == "onnx" for n in networks)
    assert Iteration.objects.get(job=job, number=0).measured_ms > 0
    final = JobFiles(job.pk).final_path("onnx")
    session = ort.InferenceSession(str(final), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, 16, 16), np.float32)})
    assert out.shape == (1, 10)
