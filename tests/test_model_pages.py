"""Model pages: upload (stored as checking, then the pre-flight check's verdict), list, detail,
delete; a rejected upload keeps no file."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from adaptation.models import Iteration, Job, ModelUpload
from adaptation.netadapt.spec import ArchitectureSpec
from webapp.lib.formatting import format_count
from tests.stored_files import files_under, torch_bytes
from tests.user_objects import upload_model

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("single_torch_thread")]

SPEC = ArchitectureSpec("plain_cnn", num_classes=3, in_channels=1, width=0.25, resolution=8)


@pytest.fixture(scope="module")
def good_weights() -> bytes:
    torch.manual_seed(0)
    return torch_bytes(SPEC.build().state_dict())


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


def upload_data(weights: bytes, **fields) -> dict:
    """POST data of the upload form (the file last, as the page sends it)."""
    data = {"name": "tiny", "arch": SPEC.arch, "width": str(SPEC.width), "num_classes": str(SPEC.num_classes),
            "in_channels": str(SPEC.in_channels), "resolution": str(SPEC.resolution), **fields}
    data["file"] = SimpleUploadedFile("tiny.pt", weights)
    return data


@functools.cache
def spec_weights() -> bytes:
    torch.manual_seed(0)
    return torch_bytes(SPEC.build().state_dict())


def stored_model(user, name="tiny") -> ModelUpload:
    """A ready model uploaded by ``user`` through the upload service (its report is the real one)."""
    return upload_model(user, SPEC, spec_weights(), name=name)


# --------------------------------------------------------------------------- pages


def test_it_lists_own_models_only(owner_client, owner, stranger, media):
    report = stored_model(owner, "mine").preflight
    stored_model(stranger, "theirs")
    response = owner_client.get(reverse("model_list"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "mine" in page and "theirs" not in page
    assert format_count(report["macs"]) in page and format_count(report["params"]) in page
    assert [row["groups"] for row in response.context["rows"]] == [len(report["groups"])]


def test_it_shows_the_upload_form(owner_client, media):
    response = owner_client.get(reverse("model_upload"))
    assert response.status_code == 200
    page = response.content.decode()
    assert '<option value="mobilenet_v1"' in page and '<option value="resnet50"' in page
    assert "which exports work" in page  # ONNX uploads: tests/test_onnx_upload.py
    assert "200 MB" in page
    assert "js/upload.js" in page and "<progress" in page


def test_it_shows_the_model(owner_client, owner, media):
    model = stored_model(owner)
    response = owner_client.get(reverse("model_detail", args=[model.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    report = model.preflight
    for text in ("plain_cnn", "features.0", "features.3", "classifier", str(report["macs"]),
                 str(report["params"]), "Delete model"):
        assert text in page


@pytest.mark.parametrize("name", ["model_list", "model_upload"])
def test_it_requires_login(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


# --------------------------------------------------------------------------- upload


def test_it_uploads_a_model_as_checking_and_sends_its_check(owner_client, owner, media, good_weights,
                                                             monkeypatch):
    sent = []
    monkeypatch.setattr("adaptation.enqueue.enqueue_check", lambda name, *args: sent.append((name, args)))
    response = owner_client.post(reverse("model_upload"), upload_data(good_weights))
    model = ModelUpload.objects.get()
    assert response.status_code == 302 and response.url == reverse("model_detail", args=[model.pk])
    assert (model.status, model.preflight, sent) == ("checking", {}, [("check_model_upload", (model.pk,))])
    assert files_under(media) == [f"models/{owner.pk}/tiny.pt"]
    page = owner_client.get(response.url).content.decode()
    assert "pre-flight check runs now" in page and "The pre-flight check is running" in page
    assert f'data-check-url="{reverse("model_status", args=[model.pk])}"' in page and "js/check.js" in page
    assert owner_client.get(reverse("model_status", args=[model.pk])).json() == {"status": "checking", "error": ""}


def test_it_uploads_and_checks_a_model(owner_client, owner, media, good_weights, checks_in_process):
    response = owner_client.post(reverse("model_upload"), upload_data(good_weights))
    model = ModelUpload.objects.get()
    assert response.status_code == 302 and response.url == reverse("model_detail", args=[model.pk])
    assert (model.owner, model.status, model.error, model.source) == (owner, "ready", "", "builtin")
    assert (model.arch, model.width, model.num_classes, model.in_channels, model.resolution) == (
        "plain_cnn", 0.25, 3, 1, 8)
    assert model.preflight["spec"] == SPEC.to_dict()
    assert model.preflight["macs"] > 0 and model.preflight["params"] > 0 and model.preflight["groups"]
    assert files_under(media) == [f"models/{owner.pk}/tiny.pt"]
    assert Path(model.file.path).read_bytes() == good_weights

    page = owner_client.get(response.url).content.decode()
    assert "status-ready" in page and "data-check-url" not in page
    assert model.preflight["groups"][0]["name"] in page


def test_it_names_the_model_after_the_file(owner_client, media, good_weights):
    owner_client.post(reverse("model_upload"), upload_data(good_weights, name=""))
    assert ModelUpload.objects.get().name == "tiny"


BAD_FILES = {
    "not a model": (b"these are not weights", {}, "not a PyTorch weights file"),
    "pickled whole module": (None, {}, "pickles a whole model object"),
    "weights that do not fit": ("good", {"num_classes": "5"}, "the weights do not fit"),
    "wrong input channels": ("good", {"in_channels": "3"}, "the weights do not fit"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_it_rejects_a_bad_file_and_keeps_no_file(owner_client, media, good_weights, case, checks_in_process):
    content, fields, message = BAD_FILES[case]
    if content is None:
        torch.manual_seed(0)
        content = torch_bytes(SPEC.build())  # torch.save(model): runs code when loaded
    elif content == "good":
        content = good_weights
    response = owner_client.post(reverse("model_upload"), upload_data(content, **fields))
    model = ModelUpload.objects.get()
    assert response.status_code == 302 and response.url == reverse("model_detail", args=[model.pk])
    assert model.status == "rejected" and message in model.error and not model.file.name
    assert files_under(media) == []
    page = owner_client.get(response.url).content.decode()
    assert "Rejected by the pre-flight check" in page and message in page
    assert owner_client.get(reverse("model_status", args=[model.pk])).json()["status"] == "rejected"


def test_it_rejects_a_width_on_a_fixed_width_architecture(owner_client, media, good_weights):
    response = owner_client.post(reverse("model_upload"), upload_data(good_weights, arch="resnet18", width="0.5"))
    assert response.status_code == 200
    assert "resnet18 has a fixed width" in response.context["form"].errors["width"][0]
    assert not ModelUpload.objects.exists()
    assert files_under(media) == []


@pytest.mark.parametrize("field, value", [("width", "0"), ("num_classes", "1"), ("resolution", "2"),
                                          ("in_channels", "2"), ("arch", "alexnet")])
def test_it_validates_the_specification(owner_client, media, good_weights, field, value):
    response = owner_client.post(reverse("model_upload"), upload_data(good_weights, **{field: value}))
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not ModelUpload.objects.exists()


def test_it_requires_a_file(owner_client, media):
    data = upload_data(b"")
    del data["file"]
    response = owner_client.post(reverse("model_upload"), data)
    assert response.context["form"].errors["file"] == ["This field is required."]


# --------------------------------------------------------------------------- delete


def test_it_deletes_the_model_and_its_file(owner_client, owner, media, django_capture_on_commit_callbacks):
    model = stored_model(owner)
    assert files_under(media) == [f"models/{owner.pk}/tiny.pt"]
    with django_capture_on_commit_callbacks(execute=True):  # files go once the deletion commits
        response = owner_client.post(reverse("model_delete", args=[model.pk]))
    assert response.status_code == 302 and response.url == reverse("model_list")
    assert not ModelUpload.objects.exists()
    assert files_under(media) == []


def test_it_deletes_only_with_post(owner_client, owner, media):
    model = stored_model(owner)
    assert owner_client.get(reverse("model_delete", args=[model.pk])).status_code == 405
    assert ModelUpload.objects.filter(pk=model.pk).exists()


def test_it_keeps_a_model_with_a_running_job(owner_client, owner, media, make_job):
    job = make_job(owner, status="running")
    response = owner_client.post(reverse("model_delete", args=[job.model.pk]), follow=True)
    assert "still running" in response.content.decode()
    assert ModelUpload.objects.filter(pk=job.model.pk).exists()


def test_it_deletes_finished_jobs_and_their_outputs_with_the_model(owner_client, owner, media, make_job,
                                                                   django_capture_on_commit_callbacks):
    job = make_job(owner, status="finished")
    Iteration.objects.create(job=job, number=0, resource=1.0, macs=1, params=1, holdout_accuracy=0.5,
                             model_file=ContentFile(b"pruned", name="iteration_0.pt"))
    assert files_under(media) == sorted([job.model.file.name, f"jobs/{job.pk}/iteration_0.pt"])
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(reverse("model_delete", args=[job.model.pk]))
    assert not Job.objects.exists() and not ModelUpload.objects.exists()
    assert files_under(media) == []


@pytest.mark.parametrize("name, method", [("model_detail", "get"), ("model_delete", "post")])
def test_it_checks_ownership(client, owner, stranger, media, name, method):
    model = stored_model(owner)
    client.force_login(stranger)
    response = getattr(client, method)(reverse(name, args=[model.pk]))
    assert response.status_code == 404
    assert ModelUpload.objects.filter(pk=model.pk).exists()
    assert files_under(media) == [f"models/{owner.pk}/tiny.pt"]


def test_it_requires_login_to_delete(client, owner, media):
    model = stored_model(owner)
    response = client.post(reverse("model_delete", args=[model.pk]))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))
    assert ModelUpload.objects.filter(pk=model.pk).exists()


def test_only_the_owner_sees_a_models_status(client, owner, stranger, media):
    model = stored_model(owner)
    client.force_login(stranger)
    assert client.get(reverse("model_status", args=[model.pk])).status_code == 404
    client.force_login(owner)
    assert client.get(reverse("model_status", args=[model.pk])).json() == {"status": "ready", "error": ""}


def test_the_check_runs_in_a_bounded_child_and_a_model_past_its_ceiling_is_rejected(owner, media, settings,
                                                                                     good_weights, monkeypatch):
    """The worker's service function with the real child: ready under the default ceiling (its
    peak recorded); rejected, with the reason and no file, when the ceiling is below what importing
    torch takes (about 0.7 GB of private writable memory)."""
    from adaptation.forms import ModelUploadForm
    from adaptation.uploads import create_model_upload, finish_model_check

    monkeypatch.setattr("adaptation.enqueue.enqueue_check", lambda name, *args: None)

    def stored(name: str) -> ModelUpload:
        data = upload_data(good_weights, name=name)
        form = ModelUploadForm(data, {"file": SimpleUploadedFile(f"{name}.pt", data.pop("file").read())})
        assert form.is_valid(), form.errors
        return create_model_upload(owner, form)

    fits = stored("fits")
    assert finish_model_check(fits.pk) == "ready"
    fits.refresh_from_db()
    assert 0 < fits.check_peak_bytes < settings.CHECK_MODEL_MEMORY_MB << 20 and fits.preflight["groups"]

    settings.CHECK_MODEL_MEMORY_MB = 768
    starved = stored("starved")
    assert finish_model_check(starved.pk) == "rejected"
    starved.refresh_from_db()
    assert starved.error == "checking the model needed more than 768.0 MB of memory"
    assert starved.check_peak_bytes < 768 << 20 and not starved.file.name
    assert files_under(media) == [f"models/{owner.pk}/fits.pt"]
