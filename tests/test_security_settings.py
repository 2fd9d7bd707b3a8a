"""Security probes of job settings: each asks for a job that would hold the only job worker for
days, or sneaks a value past the form, through the API a client uses. Every one is a 400 naming
the field, and nothing is stored or enqueued."""
from __future__ import annotations

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from adaptation.models import Job
from adaptation.netadapt.config import AdaptConfig
from adaptation.netadapt.spec import ArchitectureSpec
from tests.conftest import PASSWORD
from tests.stored_files import torch_bytes

pytestmark = pytest.mark.django_db

API = "/api/v1"
SPEC = ArchitectureSpec("plain_cnn", num_classes=10, in_channels=1, width=0.25, resolution=8)


@pytest.fixture
def job_inputs(api, media, system_device, digits_dataset, checks_in_process) -> dict:
    """A model uploaded through the API (pre-flight and all, run in this process as it is sent),
    with the built-in digits and the server's CPU: the ids a job request names."""
    torch.manual_seed(0)
    response = api.post(f"{API}/models", {
        "name": "tiny", "arch": SPEC.arch, "width": SPEC.width, "num_classes": SPEC.num_classes,
        "in_channels": SPEC.in_channels, "resolution": SPEC.resolution,
        "file": SimpleUploadedFile("tiny.pt", torch_bytes(SPEC.build().state_dict()))}, format="multipart")
    assert response.status_code == 202, response.content
    assert api.get(f"{API}/models/{response.json()['id']}").json()["status"] == "ready"
    return {"model": response.json()["id"], "dataset": digits_dataset.pk, "device": system_device.pk}


def refused(api, job_inputs, enqueued, fields: dict, field: str, content_type: str = "json") -> str:
    """POST a job with ``fields``; assert a 400 naming only ``field``, nothing stored; its message."""
    response = api.post(f"{API}/jobs", {**job_inputs, **fields}, format=content_type)
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field], response.json()
    assert not Job.objects.exists() and enqueued == []
    return response.json()[field][0]


def test_short_term_steps_of_ten_to_the_thirty_are_refused(api, job_inputs, enqueued):
    assert "from 0 to 20,000" in refused(api, job_inputs, enqueued, {"short_term_steps": 10**30},
                                         "short_term_steps")


def test_a_billion_long_term_epochs_are_refused(api, job_inputs, enqueued):
    assert "from 0 to 200" in refused(api, job_inputs, enqueued, {"long_term_epochs": 1e9}, "long_term_epochs")


def test_a_billion_iterations_are_refused(api, job_inputs, enqueued):
    assert "from 1 to 200" in refused(api, job_inputs, enqueued, {"max_iterations": 10**9}, "max_iterations")


def test_a_channel_step_of_a_billion_is_refused(api, job_inputs, enqueued):
    assert "from 1 to 256" in refused(api, job_inputs, enqueued, {"channel_step": 10**9}, "channel_step")


def test_an_absolute_latency_budget_of_a_year_is_refused(api, job_inputs, enqueued):
    message = refused(api, job_inputs, enqueued, {"budget_mode": "absolute", "budget": 3.2e10}, "budget")
    assert "at most 100,000" in message


def test_a_holdout_of_ten_million_images_is_refused(api, job_inputs, enqueued):
    assert "1,000,000" in refused(api, job_inputs, enqueued, {"holdout_size": 10**7}, "holdout_size")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_not_a_finite_number_is_refused(api, job_inputs, enqueued, value):
    # Form-encoded, where Python's float() would accept these words.
    assert refused(api, job_inputs, enqueued, {"decay": value}, "decay", "multipart") == "Enter a number."


def test_nan_in_json_is_refused(api, job_inputs, enqueued):
    response = api.post(f"{API}/jobs", f'{{"model": {job_inputs["model"]}, "dataset": {job_inputs["dataset"]}, '
                                       f'"device": {job_inputs["device"]}, "budget": NaN}}',
                        content_type="application/json")
    assert response.status_code == 400
    assert not Job.objects.exists() and enqueued == []


@pytest.mark.parametrize("value", [True, "20000.5", [5], {"steps": 5}])
def test_a_step_count_that_is_not_a_whole_number_is_refused(api, job_inputs, enqueued, value):
    refused(api, job_inputs, enqueued, {"short_term_steps": value}, "short_term_steps")


def test_settings_the_form_does_not_offer_cannot_be_sneaked_in(api, job_inputs, enqueued):
    response = api.post(f"{API}/jobs", {**job_inputs, "batch_size": 10**9, "seed": -1, "short_term_lr": 1e9,
                                        "limit_train": 0, "finetune_iteration": 3}, format="json")
    assert response.status_code == 201, response.content
    stored = Job.objects.get().settings
    defaults = AdaptConfig().to_dict()
    assert {k: stored[k] for k in ("batch_size", "seed", "short_term_lr")} == {
        k: defaults[k] for k in ("batch_size", "seed", "short_term_lr")}
    assert "limit_train" not in stored and "finetune_iteration" not in stored


def test_a_latency_estimate_the_form_does_not_offer_is_refused(api, job_inputs, enqueued):
    """``latency_model`` is a field of the form now: a value outside its choices is a 400."""
    refused(api, job_inputs, enqueued, {"latency_model": "exec"}, "latency_model")


def test_the_page_refuses_what_the_api_refuses(client, owner, job_inputs, enqueued):
    client.login(username=owner.username, password=PASSWORD)
    fields = {"metric": "latency", "budget_mode": "percent", "budget": 50, "initial_reduction": 0.025,
              "decay": 0.96, "short_term_steps": 10**30, "long_term_epochs": 1e9, "channel_step": 10**9,
              "selection": "accuracy", "max_iterations": 10**9, "holdout_size": 0.1, **job_inputs}
    response = client.post(reverse("job_create"), fields)
    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"short_term_steps", "long_term_epochs", "channel_step",
                                                    "max_iterations"}
    assert not Job.objects.exists() and enqueued == []
