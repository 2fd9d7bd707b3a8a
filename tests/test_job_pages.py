"""Job pages: list, start, detail, cancel, files, reports, fine-tune a point; owners only."""
from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from django.contrib.staticfiles import finders
from django.urls import reverse

from adaptation.formatting import PHASE_LABELS
from adaptation.job_forms import ADAPT_CONFIG_FIELDS, adapt_config_of
from adaptation.models import Iteration, Job, JobEvent, ModelUpload, Proposal
from adaptation.netadapt.config import AdaptConfig
from adaptation.netadapt.spec import ArchitectureSpec
from tests.stored_files import torch_bytes
from tests.user_objects import upload_model

pytestmark = [pytest.mark.django_db, pytest.mark.services]


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


#: plain_cnn at width 0.25 for 8-px digits, as ``uploaded_model`` uploads it: its MACs by the pre-flight.
NET = ArchitectureSpec("plain_cnn", num_classes=10, in_channels=1, width=0.25, resolution=8)
NET_MACS = 88_192


def uploaded_model(owner, spec: ArchitectureSpec = NET, name: str = "plain net") -> ModelUpload:
    """A model ``owner`` uploaded through the upload service (untrained weights of ``spec``)."""
    torch.manual_seed(0)
    return upload_model(owner, spec, torch_bytes(spec.build().state_dict()), name=name)


@pytest.fixture
def ready_model(owner, media):
    model = uploaded_model(owner)
    assert model.preflight["macs"] == NET_MACS
    return model


def form_data(model, dataset, device, **changes):
    data = {"model": model.pk, "dataset": dataset.pk, "device": device.pk, "metric": "latency",
            "budget_mode": "percent", "budget": 50, "initial_reduction": 0.025, "decay": 0.96,
            "short_term_steps": 100, "long_term_epochs": 1, "channel_step": 8, "selection": "accuracy",
            "max_iterations": 50, "holdout_size": 0.1}
    data.update(changes)
    return data


def iteration(job, number, **fields):
    values = {"resource": 2.0 - 0.1 * number, "resource_raw": 2.5, "macs": 1000 - number, "params": 100,
              "holdout_accuracy": 0.9 - 0.01 * number}
    values.update(fields)
    return Iteration.objects.create(job=job, number=number, **values)


@pytest.fixture
def logged_in(client, owner):
    client.force_login(owner)
    return client


# --------------------------------------------------------------------------- list and create


def test_it_lists_own_jobs_only(logged_in, owner, stranger, make_job):
    mine, theirs = make_job(owner), make_job(stranger)
    response = logged_in.get(reverse("job_list"))
    assert response.status_code == 200
    assert reverse("job_detail", args=[mine.pk]) in response.content.decode()
    assert reverse("job_detail", args=[theirs.pk]) not in response.content.decode()


def test_it_requires_login(client):
    assert client.get(reverse("job_list")).status_code == 302
    assert client.get(reverse("job_create")).status_code == 302


def test_it_shows_the_form_with_the_papers_defaults(logged_in, ready_model):
    response = logged_in.get(reverse("job_create"))
    assert response.status_code == 200
    form = response.context["form"]
    assert form["initial_reduction"].value() == 0.025 and form["decay"].value() == 0.96
    assert form["channel_step"].value() == 8 and form["short_term_steps"].value() == 100
    assert list(form.fields["model"].queryset) == [ready_model]


def test_the_form_states_every_settings_range(logged_in, ready_model):
    page = logged_in.get(reverse("job_create")).content.decode()
    for name, low, high in [("short_term_steps", 0, 20000), ("long_term_epochs", 0, 200),
                            ("max_iterations", 1, 200), ("channel_step", 1, 256), ("decay", 0, 1),
                            ("initial_reduction", 0, 1), ("holdout_size", 0, 1000000)]:
        tag = next(line for line in page.split("<input")[1:] if f'name="{name}"' in line)
        assert f'min="{low}"' in tag and f'max="{high}"' in tag, tag
    assert "A whole number from 0 to 20,000." in page and "A number from 0 to 200." in page
    assert "at most 100,000 ms" in page  # an absolute latency budget


def test_it_creates_a_job_with_engine_settings(logged_in, owner, ready_model, digits_dataset, system_device,
                                                enqueued):
    response = logged_in.post(reverse("job_create"), form_data(ready_model, digits_dataset, system_device,
                                                               budget=40, decay=0.9, holdout_size=300))
    job = Job.objects.get()
    assert response.status_code == 302 and response.url == reverse("job_detail", args=[job.pk])
    assert (job.owner, job.kind, job.status, job.model, job.dataset, job.device) == (
        owner, "adapt", "queued", ready_model, digits_dataset, system_device)
    config = adapt_config_of(job.settings)
    assert config == AdaptConfig(metric="latency", budget=0.4, budget_relative=True, decay=0.9)
    assert set(job.settings) == set(ADAPT_CONFIG_FIELDS) | {"holdout"}
    assert job.settings["holdout"] == 300
    from adaptation.job_inputs import JobOptions, parse_settings  # what the runner reads

    assert parse_settings(job.settings) == (config, JobOptions(holdout=300))
    assert enqueued == [job.pk]


def test_it_stores_an_absolute_budget(logged_in, ready_model, digits_dataset, system_device, enqueued):
    logged_in.post(reverse("job_create"), form_data(ready_model, digits_dataset, system_device,
                                                    metric="macs", budget_mode="absolute", budget=60_000))
    config = adapt_config_of(Job.objects.get().settings)
    assert (config.metric, config.budget, config.budget_relative) == ("macs", 60_000, False)


@pytest.mark.parametrize("changes, field, message", [
    ({"budget": -5}, "budget", "The budget must be positive."),
    ({"budget": 0}, "budget", "The budget must be positive."),
    ({"budget": 100}, "budget", "A budget of 100% of the original is already met: choose less than 100%."),
    ({"budget": 150}, "budget", "A budget of 150% of the original is already met: choose less than 100%."),
    ({"metric": "macs", "budget_mode": "absolute", "budget": 300_000}, "budget",
     "The model already has 88,192 MACs, within the budget of 300,000: the budget is already met."),
    ({"decay": 1.5}, "decay", "Decay must be a number above 0 and at most 1, not 1.5."),
    ({"initial_reduction": 0}, "initial_reduction",
     "Initial reduction must be a number above 0 and below 1, not 0."),
    ({"channel_step": 0}, "channel_step", "Channel step must be a whole number from 1 to 256, not 0."),
    ({"long_term_epochs": -1}, "long_term_epochs",
     "Long-term fine-tune epochs must be a number from 0 to 200, not -1."),
    ({"max_iterations": 0}, "max_iterations", "Max iterations must be a whole number from 1 to 200, not 0."),
    # Each setting has an upper bound: one job cannot hold the worker for days.
    ({"short_term_steps": 10**30}, "short_term_steps",
     "Short-term fine-tune steps must be a whole number from 0 to 20,000, not 1e+30."),
    ({"long_term_epochs": 1e9}, "long_term_epochs",
     "Long-term fine-tune epochs must be a number from 0 to 200, not 1e+09."),
    ({"max_iterations": 10**9}, "max_iterations",
     "Max iterations must be a whole number from 1 to 200, not 1e+09."),
    ({"channel_step": 10**9}, "channel_step", "Channel step must be a whole number from 1 to 256, not 1e+09."),
    ({"holdout_size": 10**7}, "holdout_size", "The holdout size must be a fraction below 1 or a count of "
                                              "images (a whole number from 1 to 1,000,000), not 10,000,000."),
    ({"holdout_size": 0}, "holdout_size", "The holdout needs at least one image."),
])
def test_it_rejects_bad_settings(logged_in, ready_model, digits_dataset, system_device, enqueued,
                                 changes, field, message):
    response = logged_in.post(reverse("job_create"),
                              form_data(ready_model, digits_dataset, system_device, **changes))
    assert response.status_code == 200
    assert response.context["form"].errors[field] == [message]
    assert not Job.objects.exists() and enqueued == []


def test_it_rejects_a_model_that_does_not_fit_the_dataset(logged_in, owner, digits_dataset, system_device,
                                                          enqueued):
    rgb = uploaded_model(owner, ArchitectureSpec("plain_cnn", num_classes=100, in_channels=3, width=0.25,
                                                 resolution=32), name="rgb net")
    response = logged_in.post(reverse("job_create"), form_data(rgb, digits_dataset, system_device))
    assert response.context["form"].errors["dataset"] == [
        "This dataset does not fit the model: the model expects 3-channel 32 px images and 100 classes; "
        "the dataset has 1-channel 8 px images and 10 classes."]
    assert not Job.objects.exists() and enqueued == []


def test_it_accepts_a_dataset_of_another_resolution(logged_in, owner, digits_dataset, system_device, enqueued):
    # Images are resized to the model's resolution when they load.
    upsampled = uploaded_model(owner, ArchitectureSpec("plain_cnn", num_classes=10, in_channels=1, width=0.25,
                                                       resolution=16), name="16 px net")
    logged_in.post(reverse("job_create"), form_data(upsampled, digits_dataset, system_device))
    assert Job.objects.filter(model=upsampled).exists()


def test_it_keeps_training_images_besides_the_holdout(logged_in, ready_model, digits_dataset, system_device,
                                                     enqueued):
    digits_dataset.summary = {"sizes": {"train": 1200, "holdout": 237, "validation": 360}}
    digits_dataset.save()
    response = logged_in.post(reverse("job_create"),
                              form_data(ready_model, digits_dataset, system_device, holdout_size=1437))
    assert response.context["form"].errors["holdout_size"] == [
        "scikit-learn digits has 1437 training images: a holdout of 1437 would leave none to fine-tune on."]
    assert not Job.objects.exists()


def test_it_offers_only_the_users_ready_models(logged_in, stranger, ready_model, digits_dataset, system_device,
                                               enqueued):
    theirs = uploaded_model(stranger, name="theirs")
    response = logged_in.post(reverse("job_create"), form_data(theirs, digits_dataset, system_device))
    assert "model" in response.context["form"].errors
    ready_model.status = "checking"
    ready_model.save()
    response = logged_in.post(reverse("job_create"), form_data(ready_model, digits_dataset, system_device))
    assert "model" in response.context["form"].errors
    assert not Job.objects.exists()


# --------------------------------------------------------------------------- detail


def test_it_shows_the_job_page(logged_in, owner, make_job):
    job = make_job(owner, settings=AdaptConfig(budget=0.5).to_dict())
    first = iteration(job, 0, record={"chosen_group": "features.1"})
    Proposal.objects.create(iteration=first, group="features.1", channels=24, resource=1.9,
                            holdout_accuracy=0.9, chosen=True)
    response = logged_in.get(reverse("job_detail", args=[job.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<script id="job-data" type="application/json">' in html
    assert response.context["page_data"] == {
        "job": job.pk, "ws_url": f"/ws/jobs/{job.pk}/", "metric": "latency", "unit": "ms",
        "status": "queued", "active_statuses": ["queued", "running", "waiting"],
        "phase_labels": PHASE_LABELS}
    assert '<script src="/static/vendor/chart.js/chart.umd.js"></script>' in html
    assert '<script src="/static/js/job.js"></script>' in html
    assert 'id="tradeoff-chart"' in html and 'id="job-log"' in html
    assert 'data-iteration="0"' in html and "features.1 ✓" in html
    assert "50% of the original latency" in html
    assert reverse("job_cancel", args=[job.pk]) in html
    assert "may be unreachable" not in html
    # The settings read as the job runs them: the engine's defaults, levers included.
    assert "ΔR₀ 0.025 of the original, decay 0.96, at most 50 iterations; 100 short-term steps" in html
    assert '<dd id="job-levers">batch-norm re-estimation on 10 batches; distillation 0.5 at temperature 4</dd>' in html
    assert '<dd id="job-latency-model">calibrated look-up table</dd>' in html


def test_the_job_page_names_the_levers_and_the_estimate_chosen(logged_in, owner, make_job):
    config = AdaptConfig(metric="latency", budget=0.5, bn_recalibration_batches=0, distillation_alpha=0,
                         floor_fraction=0.25)
    job = make_job(owner, settings={**config.to_dict(), "latency_model": "whole"})
    html = logged_in.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert '<dd id="job-levers">at least 0.25 of each group&#x27;s channels</dd>' in html
    paper = make_job(owner, settings=AdaptConfig(budget=0.5, bn_recalibration_batches=0, distillation_alpha=0).to_dict())
    assert "none (the paper&#x27;s recipe)" in logged_in.get(reverse("job_detail", args=[paper.pk])).content.decode()
    assert '<dd id="job-latency-model">every candidate measured whole</dd>' in html
    macs = make_job(owner, settings=AdaptConfig(metric="macs", budget=0.5).to_dict())
    assert 'id="job-latency-model"' not in logged_in.get(reverse("job_detail", args=[macs.pk])).content.decode()


def test_the_job_page_says_from_which_iteration_the_table_gave_way_to_whole_networks(logged_in, owner, make_job):
    """The engine's records say how each iteration's latency was known (netadapt.table_check)."""
    job = make_job(owner, settings=AdaptConfig(metric="latency", budget=0.5).to_dict())
    for number, estimate in enumerate(("table", "table", "table", "whole", "whole")):
        iteration(job, number, record={"latency_estimate": estimate})
    html = logged_in.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert ('<dd id="job-latency-model">calibrated look-up table; proposed candidates measured whole '
            'from iteration 3 on') in html
    trusted = make_job(owner, settings=AdaptConfig(metric="latency", budget=0.5).to_dict())
    iteration(trusted, 0, record={"latency_estimate": "table"})
    assert ('<dd id="job-latency-model">calibrated look-up table</dd>'
            in logged_in.get(reverse("job_detail", args=[trusted.pk])).content.decode())


def test_a_finished_job_says_how_it_ended_against_its_budget(logged_in, owner, make_job):
    """A relative latency budget is decided side by side with the original (the engine's A/B
    measurement after the long-term fine-tune); other budgets by the run's estimate."""
    timing = {"min_ms": 0.5, "median_ms": 0.6, "p10_ms": 0.5, "p90_ms": 0.7}
    result = {"budget_met": False, "measured_ratio": 0.52, "checked_ratio": 0.48, "resource": 0.4,
              "budget": 0.45, "ab_original": timing, "ab_final": {**timing, "min_ms": 0.26}, "iterations": 7}
    job = make_job(owner, settings=AdaptConfig(budget=0.5).to_dict(), status="finished", result=result)
    html = logged_in.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert ('<dd id="job-outcome">52.0% of the original&#x27;s latency, measured side by side with it '
            'after the long-term fine-tune (0.260 ms against 0.500 ms): budget not met; the iterations '
            'stopped at 48.0% by the same check</dd>') in html
    # Stopped by the iteration cap short of the budget: the page says what lets a job go further.
    capped = make_job(owner, settings=AdaptConfig(budget=0.5, max_iterations=10).to_dict(), status="finished",
                      result={**result, "iterations": 10, "checked_ratio": None})
    assert ('budget not met after all 10 iterations (a larger Max iterations or Initial reduction, or a '
            'smaller Fewest proposals, lets a job cut further)</dd>'
            in logged_in.get(reverse("job_detail", args=[capped.pk])).content.decode())
    macs = make_job(owner, settings=AdaptConfig(metric="macs", budget=0.5).to_dict(), status="finished",
                    result={"budget_met": True, "resource": 1200.0, "budget": 1500.0, "measured_ratio": None})
    assert ('<dd id="job-outcome">1,200 MACs by the run&#x27;s estimate, against a budget of 1,500 MACs: '
            'budget met</dd>') in logged_in.get(reverse("job_detail", args=[macs.pk])).content.decode()
    running = make_job(owner, settings=AdaptConfig(budget=0.5).to_dict(), status="running")
    assert 'id="job-outcome"' not in logged_in.get(reverse("job_detail", args=[running.pk])).content.decode()


def test_it_serves_chart_js_from_node_modules():
    path = finders.find("vendor/chart.js/chart.umd.js")
    assert path is not None, "node_modules/chart.js is missing: run `npm ci`"
    assert "node_modules" in str(path)


def test_it_warns_when_the_schedule_cannot_reach_the_budget(logged_in, owner, make_job):
    job = make_job(owner, settings=AdaptConfig(budget=0.2).to_dict())  # needs 80%, defaults reach 62.5%
    html = logged_in.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert "The budget may be unreachable: the budget needs 80.0% of the original resource removed" in html


def test_it_hides_cancel_once_the_job_is_over(logged_in, owner, make_job):
    job = make_job(owner, status="finished")
    page = logged_in.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert reverse("job_cancel", args=[job.pk]) not in page


# --------------------------------------------------------------------------- cancel


def test_it_cancels_a_queued_job_at_once(logged_in, owner, make_job):
    job = make_job(owner)
    response = logged_in.post(reverse("job_cancel", args=[job.pk]))
    assert response.status_code == 302
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == ("cancelled", True) and job.finished_at is not None
    event = JobEvent.objects.get(job=job)
    assert (event.type, event.payload) == ("job.status", {"status": "cancelled", "error": ""})


def test_it_asks_a_running_job_to_stop(logged_in, owner, make_job):
    job = make_job(owner, status="running", claimed_by="host:1")
    logged_in.post(reverse("job_cancel", args=[job.pk]))
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == ("running", True)
    assert JobEvent.objects.get(job=job).type == "job.log"


def test_it_cancels_a_job_waiting_for_measurements_at_once(logged_in, owner, make_job, system_device):
    from devices.models import MeasurementRequest

    job = make_job(owner, status="waiting", waiting_kind="measurement")
    queued, running = (MeasurementRequest.objects.create(
        owner=owner, device=system_device, job_id=job.pk, reason="x", key=str(n), runtime="onnxruntime",
        threads=1, status=status) for n, status in enumerate(("queued", "running")))
    logged_in.post(reverse("job_cancel", args=[job.pk]))
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == ("cancelled", True)
    queued.refresh_from_db(), running.refresh_from_db()
    # The device skips what it has not started; what it measures still fills its table.
    assert (queued.status, queued.error, running.status) == ("failed", "the job was cancelled", "running")


def test_a_waiting_job_says_what_it_waits_for(logged_in, owner, make_job):
    job = make_job(owner, status="waiting", waiting_kind="measurement",
                   waiting_for="waiting for phone (it never connected) to measure 12 layer(s): original")
    page = logged_in.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert "Waiting for phone (it never connected) to measure 12 layer(s): original" in page


def test_it_cancels_by_post_only(logged_in, owner, make_job):
    job = make_job(owner)
    assert logged_in.get(reverse("job_cancel", args=[job.pk])).status_code == 405
    job.refresh_from_db()
    assert job.status == "queued"


# --------------------------------------------------------------------------- files and reports


def test_it_downloads_an_iteration_and_the_final_model(logged_in, owner, make_job, media):
    job = make_job(owner, status="finished")
    iteration(job, 3)
    folder = media / "jobs" / str(job.pk)
    folder.mkdir(parents=True)
    (folder / "iteration_003.pt").write_bytes(b"iteration three")
    (folder / "final.onnx").write_bytes(b"onnx bytes")
    page = logged_in.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert reverse("job_download", args=[job.pk, 3, "pytorch"]) in page
    assert reverse("job_download_final", args=[job.pk, "onnx"]) in page
    assert reverse("job_download_final", args=[job.pk, "torchscript"]) not in page  # not written

    response = logged_in.get(reverse("job_download", args=[job.pk, 3, "pytorch"]))
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"iteration three"
    assert response["Content-Disposition"] == f'attachment; filename="job{job.pk}-iteration003.pt"'
    response = logged_in.get(reverse("job_download_final", args=[job.pk, "onnx"]))
    assert b"".join(response.streaming_content) == b"onnx bytes"


@pytest.mark.parametrize("name, args, text", [
    ("job_download", [7, "pytorch"], "has no iteration 7."),
    ("job_download_final", ["torchscript"], "does not exist (yet)"),
    ("job_download_final", ["pytorch"], "does not exist (yet)")])
def test_it_says_a_missing_file_is_missing(logged_in, owner, make_job, media, name, args, text):
    job = make_job(owner)
    response = logged_in.get(reverse(name, args=[job.pk, *args]))
    assert response.status_code == 404
    assert text in response.content.decode()


def test_it_exports_an_iteration_to_onnx_on_demand(logged_in, owner, make_job, media, tiny_cnn):
    import numpy as np
    import onnxruntime as ort
    import torch

    from adaptation.netadapt.export import load_pytorch

    spec, weights = tiny_cnn
    job = make_job(owner, status="running")
    iteration(job, 0)
    folder = media / "jobs" / str(job.pk)
    folder.mkdir(parents=True)
    (folder / "iteration_000.pt").write_bytes(weights)
    page = logged_in.get(reverse("job_detail", args=[job.pk])).content.decode()
    for fmt in ("onnx", "torchscript", "pytorch"):
        assert reverse("job_download", args=[job.pk, 0, fmt]) in page
    response = logged_in.get(reverse("job_download", args=[job.pk, 0, "onnx"]))
    assert response["Content-Disposition"] == f'attachment; filename="job{job.pk}-iteration000.onnx"'
    session = ort.InferenceSession(b"".join(response.streaming_content), providers=["CPUExecutionProvider"])
    x = spec.example_input()
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, load_pytorch(folder / "iteration_000.pt")(x).numpy(), atol=1e-4)


def test_it_refuses_unknown_formats(logged_in, owner, make_job, media):
    job = make_job(owner)
    assert logged_in.get(reverse("job_download", args=[job.pk, 0, "onnx"])).status_code == 404
    assert logged_in.get(reverse("job_download_final", args=[job.pk, "exe"])).status_code == 404
    assert logged_in.get(reverse("job_report", args=[job.pk, "xml"])).status_code == 404


def _recorded_job(make_job, owner):
    job = make_job(owner, status="finished", settings=AdaptConfig(budget=0.5).to_dict())
    iteration(job, -1, resource=2.0, measured_ms=1.8, holdout_accuracy=0.93, validation_accuracy=0.92)
    first = iteration(job, 0, resource=1.7, measured_ms=1.6, holdout_accuracy=0.91,
                      record={"chosen_group": "features.1", "target": 1.75,
                              "measured": {"min_ms": 1.6, "median_ms": 1.65}, "channels": {"features.1": 24}})
    Proposal.objects.create(iteration=first, group="features.1", channels=24, resource=1.7,
                            holdout_accuracy=0.91, chosen=True)
    Proposal.objects.create(iteration=first, group="features.4", channels=40, resource=1.72,
                            holdout_accuracy=0.88)
    return job


def test_it_reports_iterations_as_csv(logged_in, owner, make_job):
    job = _recorded_job(make_job, owner)
    response = logged_in.get(reverse("job_report", args=[job.pk, "csv"]))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["iteration"] for row in rows] == ["-1", "0"]
    assert rows[0]["validation_accuracy"] == "0.92" and rows[0]["chosen_group"] == ""
    assert (rows[1]["chosen_group"], rows[1]["target"], rows[1]["resource"], rows[1]["measured_ms"],
            rows[1]["measured_median_ms"], rows[1]["holdout_accuracy"], rows[1]["proposals"]) == (
        "features.1", "1.75", "1.7", "1.6", "1.65", "0.91", "2")
    assert rows[1]["validation_accuracy"] == ""


def test_it_reports_iterations_as_json(logged_in, owner, make_job):
    job = _recorded_job(make_job, owner)
    report = json.loads(logged_in.get(reverse("job_report", args=[job.pk, "json"])).content)
    assert report["job"]["id"] == job.pk and report["settings"]["budget"] == 0.5
    assert [it["iteration"] for it in report["iterations"]] == [-1, 0]
    second = report["iterations"][1]
    assert second["channels"] == {"features.1": 24}
    assert [(p["group"], p["chosen"]) for p in second["proposals"]] == [
        ("features.1", True), ("features.4", False)]


# --------------------------------------------------------------------------- fine-tune a point


def test_it_starts_a_fine_tune_job_of_a_point(logged_in, owner, make_job, media, enqueued):
    job = make_job(owner, status="finished", settings=AdaptConfig().to_dict())
    iteration(job, 2)
    (media / "jobs" / str(job.pk)).mkdir(parents=True)
    (media / "jobs" / str(job.pk) / "iteration_002.pt").write_bytes(b"weights")
    url = reverse("job_finetune", args=[job.pk, 2])
    assert url in logged_in.get(reverse("job_detail", args=[job.pk])).content.decode()
    response = logged_in.post(url)
    child = Job.objects.get(parent=job)
    assert response.url == reverse("job_detail", args=[child.pk])
    assert (child.kind, child.status, child.owner, child.model) == ("finetune", "queued", owner, job.model)
    assert child.settings == {**job.settings, "finetune_iteration": 2}
    assert enqueued == [child.pk]
    assert logged_in.post(reverse("job_finetune", args=[job.pk, 9])).status_code == 404
    assert Job.objects.count() == 2


def test_it_starts_the_baseline_of_an_adaptation(logged_in, owner, make_job, media, enqueued):
    job = make_job(owner, status="finished", settings=AdaptConfig().to_dict())
    iteration(job, 0)
    (media / "jobs" / str(job.pk)).mkdir(parents=True)
    (media / "jobs" / str(job.pk) / "iteration_000.pt").write_bytes(b"weights")
    url = reverse("job_baseline", args=[job.pk])
    assert url in logged_in.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert logged_in.post(url).url == reverse("job_detail", args=[job.pk])
    child = Job.objects.get(parent=job)
    assert (child.kind, child.settings, enqueued) == ("baseline", job.settings, [child.pk])
    page = logged_in.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert f"#{child.pk}</a> (baseline, queued)" in page
    # A child job has no baseline of its own.
    assert logged_in.post(reverse("job_baseline", args=[child.pk])).status_code == 404


# --------------------------------------------------------------------------- ownership


@pytest.mark.parametrize("method, name, extra", [
    ("get", "job_detail", []),
    ("post", "job_cancel", []),
    ("get", "job_download", [0, "pytorch"]),
    ("get", "job_download_final", ["onnx"]),
    ("get", "job_report", ["csv"]),
    ("get", "job_report", ["json"]),
    ("post", "job_finetune", [0]),
    ("post", "job_baseline", []),
])
def test_it_checks_ownership(logged_in, stranger, make_job, media, settings, enqueued, method, name, extra):
    theirs = make_job(stranger)
    iteration(theirs, 0)
    folder = media / "jobs" / str(theirs.pk)
    folder.mkdir(parents=True)
    (folder / "iteration_000.pt").write_bytes(b"secret")
    (folder / "final.onnx").write_bytes(b"secret")
    response = getattr(logged_in, method)(reverse(name, args=[theirs.pk, *extra]))
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert (theirs.status, theirs.cancel_requested) == ("queued", False)
    assert Job.objects.count() == 1 and not JobEvent.objects.exists() and enqueued == []
