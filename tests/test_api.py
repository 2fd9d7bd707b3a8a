"""REST API (/api/v1/): tokens, ownership (404 for strangers), uploads validated like the pages
(400 naming the field, nothing stored), devices, jobs, downloads, reports, the OpenAPI schema."""
from __future__ import annotations

import csv
import functools
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from adaptation.job_forms import JobForm
from adaptation.models import Dataset, Iteration, Job, ModelUpload, Proposal
from adaptation.netadapt.config import AdaptConfig
from adaptation.netadapt.export import export_pytorch
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation.uploads import finish_model_check
from devices.models import Device
from tests.conftest import PASSWORD
from tests.stored_files import files_under, torch_bytes
from tests.user_objects import add_device, client_of, in_this_process, upload_dataset, upload_model

pytestmark = pytest.mark.django_db

API = "/api/v1"
SPEC = ArchitectureSpec("plain_cnn", num_classes=3, in_channels=1, width=0.25, resolution=8)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def good_weights() -> bytes:
    torch.manual_seed(0)
    return torch_bytes(SPEC.build().state_dict())


@pytest.fixture
def stranger_api(stranger) -> APIClient:
    return client_of(stranger)


@pytest.fixture(autouse=True)
def _media(media):
    """Uploads go to the test's own media folder."""


#: The architecture of ``stored_model``: it fits the built-in digits (10 classes, 1 channel, 8 px).
DIGITS_SPEC = ArchitectureSpec("plain_cnn", num_classes=10, in_channels=1, width=0.25, resolution=8)


@functools.cache
def digits_weights() -> bytes:
    torch.manual_seed(0)
    return torch_bytes(DIGITS_SPEC.build().state_dict())


def stored_model(user, name="tiny", **state) -> ModelUpload:
    """A model ``user`` uploaded through the upload service; ``state`` (``status``...) as a later
    check would have set it."""
    model = upload_model(user, DIGITS_SPEC, digits_weights(), name=name)
    if state:
        ModelUpload.objects.filter(pk=model.pk).update(**state)
        model.refresh_from_db()
    return model


def folder_dataset(user, name="pets") -> Dataset:
    return upload_dataset(user, name=name)


def agent_device(user, name="phone") -> Device:
    return add_device(user, name=name)


def iteration(job, number, **fields) -> Iteration:
    values = {"resource": 2.0 - 0.1 * number, "resource_raw": 2.5, "macs": 1000 - number, "params": 100,
              "holdout_accuracy": 0.9 - 0.01 * number,
              "record": {"chosen_group": "features.0", "channels": {"features.0": 8}}}
    values.update(fields)
    return Iteration.objects.create(job=job, number=number, **values)


def job_folder(media: Path, job: Job) -> Path:
    folder = media / "jobs" / str(job.pk)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), color=shade).save(buffer, "PNG")
    return buffer.getvalue()


def zip_of_images(classes=("cats", "dogs"), per_class=4) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for c, name in enumerate(classes):
            for i in range(per_class):
                archive.writestr(f"{name}/{i}.png", png(40 * c + 10 * i))
    return buffer.getvalue()


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()]


# --------------------------------------------------------------------------- authentication


def test_it_gives_a_token_for_good_credentials(owner):
    response = APIClient().post(f"{API}/token", {"username": "alice", "password": PASSWORD}, format="json")
    assert response.status_code == 200
    token = response.json()["token"]
    assert token == Token.objects.get(user=owner).key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get(f"{API}/models").status_code == 200


def test_it_refuses_a_token_for_bad_credentials(owner):
    response = APIClient().post(f"{API}/token", {"username": "alice", "password": "wrong"}, format="json")
    assert response.status_code == 400
    assert "Unable to log in" in response.json()["non_field_errors"][0]
    response = APIClient().post(f"{API}/token", {"username": "alice"}, format="json")
    assert response.status_code == 400 and "password" in response.json()
    assert not Token.objects.exists()


@pytest.mark.parametrize("method, path", [
    ("get", "models"), ("post", "models"), ("get", "models/1"), ("get", "datasets"), ("post", "datasets"),
    ("get", "datasets/1"), ("get", "devices"), ("post", "devices"), ("delete", "devices/1"), ("get", "jobs"),
    ("post", "jobs"), ("get", "jobs/1"), ("post", "jobs/1/cancel"), ("get", "jobs/1/iterations/0/download"),
    ("get", "jobs/1/report")])
def test_it_requires_authentication(method, path):
    response = getattr(APIClient(), method)(f"{API}/{path}")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_it_refuses_an_unknown_token(owner):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert client.get(f"{API}/models").status_code == 401


# --------------------------------------------------------------------------- lists and ownership


def test_lists_show_own_and_shared_objects_only(api, owner, stranger, media, system_device, digits_dataset,
                                                make_job):
    mine, theirs = stored_model(owner, "mine"), stored_model(stranger, "theirs")
    my_data, their_data = folder_dataset(owner), folder_dataset(stranger)
    my_device, their_device = agent_device(owner), agent_device(stranger)
    my_job, their_job = make_job(owner), make_job(stranger)
    assert ids(api.get(f"{API}/models")) == [my_job.model.pk, mine.pk]
    assert sorted(ids(api.get(f"{API}/datasets"))) == sorted([digits_dataset.pk, my_data.pk])
    assert sorted(ids(api.get(f"{API}/devices"))) == sorted([system_device.pk, my_device.pk])
    assert ids(api.get(f"{API}/jobs")) == [my_job.pk]
    assert theirs.pk and their_data.pk and their_device.pk and their_job.pk
    devices = {d["id"]: d for d in api.get(f"{API}/devices").json()}
    assert devices[system_device.pk]["system"] is True and devices[my_device.pk]["system"] is False
    datasets = {d["id"]: d for d in api.get(f"{API}/datasets").json()}
    assert datasets[digits_dataset.pk]["builtin"] is True and "archive" not in datasets[my_data.pk]


def test_shared_objects_can_be_read_by_everyone(stranger_api, system_device, digits_dataset):
    assert stranger_api.get(f"{API}/devices/{system_device.pk}").json()["name"] == system_device.name
    assert stranger_api.get(f"{API}/datasets/{digits_dataset.pk}").json()["builtin_name"] == "digits"


@pytest.mark.parametrize("what", ["model", "dataset", "device", "job", "download", "report"])
def test_strangers_get_404_on_reads(stranger_api, owner, media, make_job, what):
    job = make_job(owner, status="finished")
    iteration(job, 0)
    (job_folder(media, job) / "iteration_000.pt").write_bytes(b"network")
    path = {"model": f"models/{job.model.pk}", "dataset": f"datasets/{folder_dataset(owner).pk}",
            "device": f"devices/{agent_device(owner).pk}", "job": f"jobs/{job.pk}",
            "download": f"jobs/{job.pk}/iterations/0/download?format=pytorch",
            "report": f"jobs/{job.pk}/report?format=csv"}[what]
    response = stranger_api.get(f"{API}/{path}")
    assert response.status_code == 404
    assert "network" not in response.content.decode() and "iteration" not in response.content.decode()


def test_strangers_cannot_delete_a_device(stranger_api, owner):
    device = agent_device(owner)
    assert stranger_api.delete(f"{API}/devices/{device.pk}").status_code == 404
    assert Device.objects.filter(pk=device.pk).exists()


def test_strangers_cannot_cancel_a_job(stranger_api, owner, make_job):
    job = make_job(owner, status="queued")
    assert stranger_api.post(f"{API}/jobs/{job.pk}/cancel").status_code == 404
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == ("queued", False)


def test_strangers_cannot_start_a_job_on_others_objects(stranger_api, owner, system_device, digits_dataset,
                                                        enqueued):
    model = stored_model(owner)
    response = stranger_api.post(f"{API}/jobs", {"model": model.pk, "dataset": digits_dataset.pk,
                                                 "device": agent_device(owner).pk}, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"model", "device"}
    assert not Job.objects.exists() and enqueued == []


# --------------------------------------------------------------------------- model uploads


def model_form(weights: bytes, **fields) -> dict:
    data = {"name": "tiny", "arch": SPEC.arch, "width": str(SPEC.width), "num_classes": str(SPEC.num_classes),
            "in_channels": str(SPEC.in_channels), "resolution": str(SPEC.resolution), **fields}
    data["file"] = SimpleUploadedFile("tiny.pt", weights)
    return data


@pytest.mark.usefixtures("single_torch_thread")
def test_it_uploads_a_model(api, owner, media, good_weights, checks_in_process):
    response = api.post(f"{API}/models", model_form(good_weights), format="multipart")
    assert response.status_code == 202, response.content
    model = ModelUpload.objects.get()
    assert response.json()["id"] == model.pk and response.json()["status"] == "checking"
    assert checks_in_process == [("check_model_upload", (model.pk,))]
    body = api.get(f"{API}/models/{model.pk}").json()  # the check has run (in this process)
    assert body["status"] == "ready" and body["error"] == ""
    assert (body["arch"], body["width"], body["num_classes"], body["in_channels"], body["resolution"]) == (
        "plain_cnn", 0.25, 3, 1, 8)
    assert body["preflight"]["macs"] > 0 and body["preflight"]["groups"]
    assert "file" not in body  # no server paths
    assert model.owner == owner and Path(model.file.path).read_bytes() == good_weights


REJECTED_MODELS = {
    "not a model": (lambda good: b"these are not weights", {}, "not a PyTorch weights file"),
    "pickled whole module": (lambda good: torch_bytes(SPEC.build()), {}, "pickles a whole model object"),
    "weights that do not fit": (lambda good: good, {"num_classes": "5"}, "the weights do not fit"),
}


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.parametrize("case", list(REJECTED_MODELS))
def test_the_check_rejects_a_bad_model_and_keeps_no_file(api, media, good_weights, case, checks_in_process):
    make, fields, message = REJECTED_MODELS[case]
    data = model_form(b"", **fields)
    data["file"] = SimpleUploadedFile("tiny.pt", make(good_weights))
    response = api.post(f"{API}/models", data, format="multipart")
    assert response.status_code == 202 and response.json()["status"] == "checking"
    body = api.get(f"{API}/models/{response.json()['id']}").json()
    assert body["status"] == "rejected" and message in body["error"] and body["preflight"] == {}
    assert files_under(media) == []


BAD_MODELS = {
    "fixed width": (lambda good: good, {"arch": "resnet18", "width": "0.5"}, "width", "has a fixed width"),
    "unknown architecture": (lambda good: good, {"arch": "alexnet"}, "arch", "Select a valid choice"),
    "no file": (None, {}, "file", "This field is required."),
}


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_it_rejects_a_bad_model_and_stores_nothing(api, media, good_weights, case):
    make, fields, field, message = BAD_MODELS[case]
    data = model_form(b"", **fields)
    if make is None:
        del data["file"]
    else:
        data["file"] = SimpleUploadedFile("tiny.pt", make(good_weights))
    response = api.post(f"{API}/models", data, format="multipart")
    assert response.status_code == 400
    assert message in response.json()[field][0]
    assert not ModelUpload.objects.exists()
    assert files_under(media) == []


def test_it_applies_the_upload_size_limit(api, media, settings, good_weights):
    settings.UPLOAD_MAX_BYTES = 1000
    response = api.post(f"{API}/models", model_form(good_weights), format="multipart")
    assert response.status_code == 400
    assert response.json()["file"] == ["The file is larger than the 1000 bytes limit."]
    assert not ModelUpload.objects.exists() and files_under(media) == []


def test_it_takes_uploads_as_multipart_only(api, media):
    assert api.post(f"{API}/models", {"name": "x"}, format="json").status_code == 415


# --------------------------------------------------------------------------- dataset uploads


def test_it_uploads_an_image_folder(api, owner, media, checks_in_process):
    archive = SimpleUploadedFile("pets.zip", zip_of_images(), content_type="application/zip")
    response = api.post(f"{API}/datasets", {"name": "", "resolution": "8", "channels": "auto",
                                            "archive": archive}, format="multipart")
    assert response.status_code == 202, response.content
    dataset = Dataset.objects.get()
    assert (response.json()["id"], response.json()["status"], response.json()["summary"]) == (
        dataset.pk, "checking", {"name": "pets"})
    body = api.get(f"{API}/datasets/{dataset.pk}").json()
    assert body["status"] == "ready"
    assert (body["id"], body["name"], body["kind"], body["builtin"]) == (dataset.pk, "pets", "folder", False)
    assert body["summary"]["num_classes"] == 2 and body["summary"]["class_names"] == ["cats", "dogs"]
    assert dataset.owner == owner and files_under(media)


@pytest.mark.parametrize("content, field, message", [
    (b"just some text", "archive", "Rejected: not a zip archive"),
    ("one class", "archive", "need at least 2"),
])
def test_the_check_rejects_a_bad_archive_and_keeps_no_file(api, media, content, field, message,
                                                            checks_in_process):
    if content == "one class":
        content = zip_of_images(classes=("cats",))
    archive = SimpleUploadedFile("pets.zip", content, content_type="application/zip")
    response = api.post(f"{API}/datasets", {"resolution": "8", "channels": "auto", "archive": archive},
                        format="multipart")
    assert response.status_code == 202 and response.json()["status"] == "checking"
    body = api.get(f"{API}/datasets/{response.json()['id']}").json()
    assert body["status"] == "rejected" and message in body["error"] and str(media) not in body["error"]
    assert files_under(media) == []


def test_it_validates_the_dataset_fields(api, media):
    archive = SimpleUploadedFile("pets.zip", zip_of_images(), content_type="application/zip")
    response = api.post(f"{API}/datasets", {"resolution": "4", "channels": "2", "archive": archive},
                        format="multipart")
    assert response.status_code == 400 and set(response.json()) == {"resolution", "channels"}
    assert not Dataset.objects.exists() and files_under(media) == []


# --------------------------------------------------------------------------- devices


def test_it_creates_an_agent_device(api, owner):
    response = api.post(f"{API}/devices", {"name": "Pixel 7", "runtime": "torch", "threads": 4,
                                           "description": "my phone"}, format="json")
    assert response.status_code == 201, response.content
    device = Device.objects.get(owner=owner)
    body = response.json()
    assert (body["id"], body["kind"], body["runtime"], body["threads"], body["system"], body["status"]) == (
        device.pk, "agent", "torch", 4, False, "offline")
    assert (device.name, device.description) == ("Pixel 7", "my phone")


@pytest.mark.parametrize("data, field, message", [
    ({"name": "server", "kind": "local"}, "kind", "cannot be created"),
    ({"name": "phone", "threads": 0}, "threads", "greater than or equal to 1"),
    ({"name": "phone", "runtime": "tflite"}, "runtime", "not a valid choice"),
    ({"name": "  "}, "name", "may not be blank"),
    ({"name": "x" * 101}, "name", "no more than 100"),
    ({}, "name", "required"),
])
def test_it_validates_a_new_device(api, system_device, data, field, message):
    response = api.post(f"{API}/devices", data, format="json")
    assert response.status_code == 400
    assert message in response.json()[field][0]
    assert Device.objects.count() == 1  # the system device


def test_it_ignores_read_only_device_fields(api, owner):
    response = api.post(f"{API}/devices", {"name": "phone", "status": "online", "facts": {"os": "x"}},
                        format="json")
    assert response.status_code == 201
    device = Device.objects.get(owner=owner)
    assert (device.status, device.facts) == ("offline", {})


def test_it_deletes_an_own_device(api, owner):
    device = agent_device(owner)
    assert api.delete(f"{API}/devices/{device.pk}").status_code == 204
    assert not Device.objects.filter(pk=device.pk).exists()


def test_it_refuses_to_delete_the_system_device(api, system_device):
    response = api.delete(f"{API}/devices/{system_device.pk}")
    assert response.status_code == 403
    assert response.json()["detail"] == "The server's own CPU is shared and cannot be deleted."
    assert Device.objects.filter(pk=system_device.pk).exists()


def test_it_keeps_a_device_that_jobs_use(api, owner, make_job):
    job = make_job(owner)
    device = agent_device(owner)
    Job.objects.filter(pk=job.pk).update(device=device)
    response = api.delete(f"{API}/devices/{device.pk}")
    assert response.status_code == 409 and "used by 1 job" in response.json()["detail"]
    assert Device.objects.filter(pk=device.pk).exists()


# --------------------------------------------------------------------------- jobs


def job_request(model, dataset, device, /, **changes) -> dict:
    data = {"model": model.pk, "dataset": dataset.pk, "device": device.pk, "metric": "latency",
            "budget_mode": "percent", "budget": 40, "initial_reduction": 0.05, "decay": 0.9,
            "short_term_steps": 50, "long_term_epochs": 2, "channel_step": 4, "selection": "accuracy",
            "max_iterations": 20, "holdout_size": 0.2}
    data.update(changes)
    return data


def test_it_creates_a_job(api, owner, media, system_device, digits_dataset, enqueued):
    model = stored_model(owner)
    data = job_request(model, digits_dataset, system_device)
    response = api.post(f"{API}/jobs", data, format="json")
    assert response.status_code == 201, response.content
    job = Job.objects.get()
    body = response.json()
    assert (body["id"], body["status"], body["model"], body["dataset"], body["device"]) == (
        job.pk, "queued", model.pk, digits_dataset.pk, system_device.pk)
    form = JobForm(data, user=owner)  # the page's form stores the same settings
    assert form.is_valid()
    assert job.settings == form.job_settings() == body["settings"]
    assert job.settings["budget"] == pytest.approx(0.4) and job.settings["holdout"] == 0.2
    assert job.owner == owner and enqueued == [job.pk]


@pytest.mark.usefixtures("single_torch_thread")
def test_it_refuses_a_job_on_a_model_or_dataset_still_checking_or_rejected(
        api, owner, media, good_weights, system_device, digits_dataset, enqueued, monkeypatch):
    sent = []
    monkeypatch.setattr("adaptation.enqueue.enqueue_check", lambda name, *args: sent.append(args))
    model_id = api.post(f"{API}/models", model_form(good_weights), format="multipart").json()["id"]
    archive = SimpleUploadedFile("pets.zip", zip_of_images(), content_type="application/zip")
    dataset_id = api.post(f"{API}/datasets", {"resolution": "8", "channels": "auto", "archive": archive},
                          format="multipart").json()["id"]
    ready = stored_model(owner)
    response = api.post(f"{API}/jobs", {"model": model_id, "dataset": digits_dataset.pk,
                                        "device": system_device.pk}, format="json")
    assert response.status_code == 400
    assert response.json()["model"] == ["The model tiny is still being checked: start the job once its "
                                        "pre-flight check has passed."]
    response = api.post(f"{API}/jobs", {"model": ready.pk, "dataset": dataset_id,
                                        "device": system_device.pk}, format="json")
    assert response.status_code == 400 and "still being checked" in response.json()["dataset"][0]
    response = api.post(f"{API}/devices/{system_device.pk}/measure", {"model": model_id}, format="json")
    assert response.status_code == 400 and "is still being checked" in str(response.json()), response.content
    ModelUpload.objects.filter(pk=model_id).update(num_classes=5)  # the weights no longer fit
    assert finish_model_check(model_id, runner=in_this_process) == "rejected"
    response = api.post(f"{API}/jobs", {"model": model_id, "dataset": digits_dataset.pk,
                                        "device": system_device.pk}, format="json")
    assert response.status_code == 400
    assert response.json()["model"][0].startswith("The model tiny was rejected by its pre-flight check")
    assert not Job.objects.exists() and enqueued == []


def test_it_fills_left_out_settings_with_the_forms_defaults(api, owner, system_device, digits_dataset,
                                                            enqueued):
    model = stored_model(owner)
    response = api.post(f"{API}/jobs", {"model": model.pk, "dataset": digits_dataset.pk,
                                        "device": system_device.pk}, format="json")
    assert response.status_code == 201, response.content
    settings = Job.objects.get().settings
    assert (settings["budget"], settings["max_iterations"], settings["holdout"]) == (0.5, 50, 0.1)
    assert settings["min_proposals"] == AdaptConfig().min_proposals


def test_a_job_keeps_the_fewest_proposals_it_is_given(api, owner, system_device, digits_dataset, enqueued):
    model = stored_model(owner)
    response = api.post(f"{API}/jobs", job_request(model, digits_dataset, system_device, min_proposals=2),
                        format="json")
    assert response.status_code == 201, response.content
    assert response.json()["settings"]["min_proposals"] == 2 != AdaptConfig().min_proposals
    assert Job.objects.get().settings["min_proposals"] == 2


def test_it_creates_a_job_with_the_levers_it_is_given_or_the_papers(api, owner, system_device,
                                                                   digits_dataset, enqueued):
    model = stored_model(owner)
    levers = {"bn_recalibration_batches": 4, "distillation_alpha": 0.3, "distillation_temperature": 2,
              "floor_minimum": 16, "floor_fraction": 0.25}
    response = api.post(f"{API}/jobs", job_request(model, digits_dataset, system_device, **levers),
                        format="json")
    assert response.status_code == 201, response.content
    assert {k: response.json()["settings"][k] for k in levers} == levers
    paper = api.post(f"{API}/jobs", job_request(model, digits_dataset, system_device, preset="paper",
                                                **levers), format="json")
    assert paper.status_code == 201, paper.content
    settings = Job.objects.get(pk=paper.json()["id"]).settings
    assert (settings["bn_recalibration_batches"], settings["distillation_alpha"], settings["floor_minimum"],
            settings["floor_fraction"], settings["min_proposals"]) == (0, 0, 0, 0, 0)
    left_out = Job.objects.get(pk=api.post(f"{API}/jobs", {"model": model.pk, "dataset": digits_dataset.pk,
                                                           "device": system_device.pk}, format="json").json()["id"])
    assert left_out.settings["distillation_alpha"] == AdaptConfig().distillation_alpha > 0
    refused = api.post(f"{API}/jobs", job_request(model, digits_dataset, system_device, distillation_alpha=1.5),
                       format="json")
    assert refused.status_code == 400 and refused.json() == {
        "distillation_alpha": ["Distillation weight must be a number from 0 to 1, not 1.5."]}
    assert len(enqueued) == 3


@pytest.mark.parametrize("changes, field, message", [
    ({"budget": -5}, "budget", "The budget must be positive."),
    ({"budget": 120}, "budget", "already met"),
    ({"budget": "lots"}, "budget", "Enter a number."),
    ({"holdout_size": 2.5}, "holdout_size", "whole number"),
    ({"decay": 1.5}, "decay", "Decay"),
    ({"metric": "joules"}, "metric", "Select a valid choice"),
    ({"model": 999_999}, "model", "Select a valid choice"),
])
def test_it_validates_a_job_like_the_form(api, owner, system_device, digits_dataset, enqueued, changes, field,
                                          message):
    model = stored_model(owner)
    response = api.post(f"{API}/jobs", job_request(model, digits_dataset, system_device, **changes),
                        format="json")
    assert response.status_code == 400
    assert message in response.json()[field][0]
    assert not Job.objects.exists() and enqueued == []


@pytest.mark.parametrize("field, value, message", [
    ("short_term_steps", 10**30, "Short-term fine-tune steps must be a whole number from 0 to 20,000, not 1e+30."),
    ("long_term_epochs", 1e9, "Long-term fine-tune epochs must be a number from 0 to 200, not 1e+09."),
    ("max_iterations", 10**9, "Max iterations must be a whole number from 1 to 200, not 1e+09."),
    ("channel_step", 10**9, "Channel step must be a whole number from 1 to 256, not 1e+09."),
    ("decay", 0, "Decay must be a number above 0 and at most 1, not 0."),
    ("min_proposals", -1, "Fewest proposals must be a whole number from 0 to 1,000, not -1."),
    ("holdout_size", 2_000_000, "The holdout size must be a fraction below 1 or a count of images"),
])
def test_it_refuses_settings_out_of_their_range(api, owner, system_device, digits_dataset, enqueued, field,
                                                value, message):
    model = stored_model(owner)
    response = api.post(f"{API}/jobs", job_request(model, digits_dataset, system_device, **{field: value}),
                        format="json")
    assert response.status_code == 400
    assert list(response.json()) == [field] and response.json()[field][0].startswith(message)
    assert not Job.objects.exists() and enqueued == []


@pytest.mark.parametrize("metric, budget, message", [
    ("latency", 200_000, "Budget must be a number above 0 and at most 100,000, not 200,000 (an absolute "
                         "latency budget)."),
    ("macs", 1e16, "Budget must be a number above 0 and at most 1e+15, not 1e+16 (an absolute macs budget)."),
])
def test_it_refuses_an_absolute_budget_out_of_range(api, owner, system_device, digits_dataset, enqueued, metric,
                                                    budget, message):
    model = stored_model(owner, preflight={})  # the model's own count unknown: the range still holds
    response = api.post(f"{API}/jobs", job_request(model, digits_dataset, system_device, metric=metric,
                                                   budget_mode="absolute", budget=budget), format="json")
    assert response.status_code == 400 and response.json() == {"budget": [message]}
    assert not Job.objects.exists()


def test_it_refuses_a_model_that_failed_its_check(api, owner, system_device, digits_dataset, enqueued):
    model = stored_model(owner, status="rejected")
    response = api.post(f"{API}/jobs", job_request(model, digits_dataset, system_device), format="json")
    assert response.status_code == 400 and "model" in response.json()
    assert not Job.objects.exists()


def test_it_shows_a_job_with_its_iterations(api, owner, make_job):
    job = make_job(owner, status="finished", result={"iterations": 2, "budget_met": True})
    iteration(job, -1)
    first = iteration(job, 0)
    iteration(job, 1, validation_accuracy=0.8)
    Proposal.objects.create(iteration=first, group="features.0", channels=8, resource=1.9, holdout_accuracy=0.88,
                            chosen=True)
    Proposal.objects.create(iteration=first, group="features.3", channels=12, resource=1.95)
    body = api.get(f"{API}/jobs/{job.pk}").json()
    assert (body["id"], body["status"], body["final_iteration"]) == (job.pk, "finished", 1)
    assert [i["number"] for i in body["iterations"]] == [-1, 0, 1]
    point = body["iterations"][1]
    assert (point["chosen_group"], point["channels"], point["macs"]) == ("features.0", {"features.0": 8}, 1000)
    assert point["proposals"] == [
        {"group": "features.0", "channels": 8, "resource": 1.9, "holdout_accuracy": 0.88, "chosen": True},
        {"group": "features.3", "channels": 12, "resource": 1.95, "holdout_accuracy": None, "chosen": False}]
    assert body["iterations"][2]["validation_accuracy"] == 0.8
    assert "iterations" not in api.get(f"{API}/jobs").json()[0]


@pytest.mark.parametrize("start, code, status, requested", [
    ("queued", 200, "cancelled", True), ("waiting", 200, "cancelled", True), ("running", 202, "running", True)])
def test_it_cancels_a_job(api, owner, make_job, start, code, status, requested):
    job = make_job(owner, status=start)
    response = api.post(f"{API}/jobs/{job.pk}/cancel")
    assert response.status_code == code
    assert (response.json()["job"]["status"], response.json()["job"]["cancel_requested"]) == (status, requested)
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == (status, requested)


def test_it_does_not_cancel_an_ended_job(api, owner, make_job):
    job = make_job(owner, status="finished")
    response = api.post(f"{API}/jobs/{job.pk}/cancel")
    assert response.status_code == 409 and "already finished" in response.json()["detail"]
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == ("finished", False)


# --------------------------------------------------------------------------- downloads and reports


def test_it_downloads_an_iteration(api, owner, media, make_job):
    job = make_job(owner, status="running")
    iteration(job, 3)
    (job_folder(media, job) / "iteration_003.pt").write_bytes(b"network 3")
    response = api.get(f"{API}/jobs/{job.pk}/iterations/3/download?format=pytorch")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"network 3"
    assert response["Content-Disposition"] == f'attachment; filename="job{job.pk}-iteration003.pt"'
    assert api.get(f"{API}/jobs/{job.pk}/iterations/3/download").status_code == 200  # pytorch by default


@pytest.mark.parametrize("fmt, name", [("onnx", "final.onnx"), ("torchscript", "final.torchscript.pt"),
                                       ("pytorch", "final.pt")])
def test_the_final_iteration_is_the_final_files(api, owner, media, make_job, fmt, name):
    job = make_job(owner, status="finished", result={"iterations": 2})
    iteration(job, 1)
    folder = job_folder(media, job)
    (folder / "iteration_001.pt").write_bytes(b"before the long fine-tune")
    (folder / name).write_bytes(b"final " + fmt.encode())
    response = api.get(f"{API}/jobs/{job.pk}/iterations/1/download?format={fmt}")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"final " + fmt.encode()
    assert "iteration001" in response["Content-Disposition"]


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_it_exports_an_iteration_on_demand(api, owner, media, make_job, fmt):
    import onnxruntime

    job = make_job(owner, status="running")
    iteration(job, 0)
    torch.manual_seed(0)
    network = SPEC.build().eval()
    export_pytorch(network, SPEC, {}, job_folder(media, job) / "iteration_000.pt")
    response = api.get(f"{API}/jobs/{job.pk}/iterations/0/download?format={fmt}")
    assert response.status_code == 200, response.content
    data = b"".join(response.streaming_content)
    example = SPEC.example_input()
    expected = network(example).detach().numpy()
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        (output,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    else:
        output = torch.jit.load(io.BytesIO(data))(example).detach().numpy()
    assert abs(output - expected).max() < 1e-4
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    assert f'filename="job{job.pk}-iteration000{suffix}"' in response["Content-Disposition"]
    assert files_under(media) == sorted([job.model.file.name, f"jobs/{job.pk}/iteration_000.pt"])  # nothing left behind


@pytest.mark.parametrize("number, fmt, code, message", [
    (5, "pytorch", 404, "has no iteration 5"),
    (0, "pytorch", 404, "The PyTorch file of iteration 0"),
    (0, "onnx", 404, "The PyTorch file of iteration 0"),
    (-1, "pytorch", 404, "the original network"),
    (0, "tflite", 400, "Unknown format 'tflite'"),
])
def test_it_explains_what_it_cannot_download(api, owner, media, make_job, number, fmt, code, message):
    job = make_job(owner, status="running")
    iteration(job, -1)
    iteration(job, 0)
    response = api.get(f"{API}/jobs/{job.pk}/iterations/{number}/download?format={fmt}")
    assert response.status_code == code
    body = response.json()
    assert message in (body["format"][0] if code == 400 else body["detail"])


def test_it_reports_a_missing_final_file(api, owner, media, make_job):
    job = make_job(owner, status="finished", result={"iterations": 1})
    iteration(job, 0)
    (job_folder(media, job) / "iteration_000.pt").write_bytes(b"network")
    response = api.get(f"{API}/jobs/{job.pk}/iterations/0/download?format=onnx")
    assert response.status_code == 404 and "final ONNX file" in response.json()["detail"]


def test_it_reports_a_job(api, owner, media, make_job):
    job = make_job(owner, status="finished", settings={"metric": "latency", "budget": 0.5})
    iteration(job, -1)
    iteration(job, 0, measured_ms=1.5)
    response = api.get(f"{API}/jobs/{job.pk}/report?format=json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    report = json.loads(response.content)
    assert report["job"]["id"] == job.pk and report["settings"]["budget"] == 0.5
    assert [row["iteration"] for row in report["iterations"]] == [-1, 0]
    assert report["iterations"][1]["measured_ms"] == 1.5
    assert report["iterations"][1]["channels"] == {"features.0": 8}
    assert api.get(f"{API}/jobs/{job.pk}/report").content == response.content  # json by default

    response = api.get(f"{API}/jobs/{job.pk}/report?format=csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == f'attachment; filename="job{job.pk}-report.csv"'
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["iteration"] for row in rows] == ["-1", "0"] and rows[1]["measured_ms"] == "1.5"

    response = api.get(f"{API}/jobs/{job.pk}/report?format=xml")
    assert response.status_code == 400 and "Unknown format 'xml'" in response.json()["format"][0]


# --------------------------------------------------------------------------- schema


PATHS = ["/api/v1/token", "/api/v1/models", "/api/v1/models/{id}", "/api/v1/datasets", "/api/v1/datasets/{id}",
         "/api/v1/devices", "/api/v1/devices/{id}", "/api/v1/jobs", "/api/v1/jobs/{id}",
         "/api/v1/jobs/{id}/cancel", "/api/v1/jobs/{id}/iterations/{number}/download",
         "/api/v1/jobs/{id}/report"]


def test_the_schema_documents_every_endpoint():
    response = APIClient().get(f"{API}/schema?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    assert set(PATHS) <= set(schema["paths"])
    assert set(schema["paths"]["/api/v1/devices/{id}"]) == {"get", "delete"}
    assert set(schema["paths"]["/api/v1/models"]) == {"get", "post"}
    components = schema["components"]["schemas"]
    job_request_fields = components["JobCreateRequest"]
    assert {"model", "dataset", "device", "budget", "holdout_size"} <= set(job_request_fields["properties"])
    assert set(job_request_fields["required"]) == {"model", "dataset", "device"}
    assert job_request_fields["properties"]["budget"]["default"] == 50
    ranges = {name: (job_request_fields["properties"][name].get("minimum"),
                     job_request_fields["properties"][name].get("maximum"))
              for name in ("short_term_steps", "long_term_epochs", "max_iterations", "channel_step", "decay",
                           "initial_reduction", "holdout_size", "distillation_alpha", "bn_recalibration_batches",
                           "min_proposals")}
    assert ranges == {"distillation_alpha": (0, 1), "bn_recalibration_batches": (0, 1000),"short_term_steps": (0, 20000), "long_term_epochs": (0, 200), "max_iterations": (1, 200),
                      "min_proposals": (0, 1000),
                      "channel_step": (1, 256), "decay": (0, 1), "initial_reduction": (0, 1),
                      "holdout_size": (0, 1_000_000)}
    assert "A whole number from 0 to 20,000." in job_request_fields["properties"]["short_term_steps"]["description"]
    assert {"arch", "width", "num_classes", "in_channels", "resolution", "file"} <= set(
        components["ModelUploadRequest"]["properties"])
    assert "archive" in components["DatasetUploadRequest"]["properties"]
    assert "iterations" in components["JobDetail"]["properties"]
    assert "tokenAuth" in schema["components"]["securitySchemes"]
    download = schema["paths"]["/api/v1/jobs/{id}/iterations/{number}/download"]["get"]
    formats = [p for p in download["parameters"] if p["name"] == "format"][0]["schema"]["enum"]
    assert sorted(formats) == ["onnx", "pytorch", "torchscript"]


def test_the_schema_is_yaml_by_default():
    response = APIClient().get(f"{API}/schema")
    assert response.status_code == 200
    assert response.content.startswith(b"openapi: 3.")
    assert b"/api/v1/jobs/{id}/cancel:" in response.content


def test_a_waiting_job_says_what_it_waits_for(api, owner, make_job):
    job = make_job(owner, status="waiting", waiting_kind="measurement",
                   waiting_for="waiting for phone (it never connected) to measure 3 layer(s): original")
    body = api.get(f"{API}/jobs/{job.pk}").json()
    assert (body["status"], body["waiting_for"]) == ("waiting", job.waiting_for)
