"""Measuring a model or a job's point on a device ("Measure on…", POST /api/v1/devices/<id>/measure):
the request it opens, the worker keeping per-run samples, the measurement page (status, stats,
histogram, per-layer view of the look-up table), ownership and refusals."""
from __future__ import annotations

import json
import re

import pytest
import torch
from django.urls import reverse
from django.utils.html import escape
from rest_framework.test import APIClient

from adaptation.models import Iteration, ModelUpload
from adaptation.netadapt.resources import CALL_OVERHEAD_SIGNATURE, LatencyTableModel
from adaptation.netadapt.architectures import build_network, describe_network
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation import measure_model
from adaptation import network_files
from adaptation.network_files import export_networks
from devices.measure import MeasureProtocol, TimingStats
from devices.measure.tracing import trace_layers
from devices.measure.protocol import time_with_retries, time_with_retries_and_samples
from devices.models import MeasurementRequest
from devices.requests import device_table, fail_request, open_request
from devices.agent.protocol import MAX_SAMPLES, kept_samples
from devices.tasks import measure_request
from tests.stored_files import torch_bytes
from tests.user_objects import add_device, upload_model

pytestmark = pytest.mark.django_db(transaction=True)

SPEC = ArchitectureSpec("plain_cnn", 10, 1, 0.5, 8)
#: make_job's model: plain_cnn width 1.0 at 8 px; its iteration shrinks one group.
JOB_SPEC = ArchitectureSpec("plain_cnn", 10, 1, 1.0, 8)
PRUNED = {"features.4.0": 64}
#: Timed runs of each whole network in these tests (3 rounds of 20).
RUNS = 60


@pytest.fixture(autouse=True)
def short_protocol(settings):
    settings.MEASURE_PROTOCOL = {"warmup": 2, "rounds": 3, "runs_per_round": 20}


def uploaded_model(user, name: str) -> ModelUpload:
    """A model ``user`` uploaded through the upload service: untrained weights of ``SPEC``."""
    torch.manual_seed(0)
    return upload_model(user, SPEC, torch_bytes(SPEC.build().state_dict()), name=name)


@pytest.fixture
def model(owner, media):
    return uploaded_model(owner, "tiny net")


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


def page(response) -> str:
    return " ".join(response.content.decode().split())


def chart_data(response) -> dict:
    match = re.search(r'<script id="measurement-data" type="application/json">(.*?)</script>',
                      response.content.decode(), re.S)
    assert match, "no histogram data on the page"
    return json.loads(match.group(1))


def layer_names(response) -> list[str]:
    return re.findall(r'<tr data-layer="([^"]+)">', response.content.decode())


def traced(spec: ArchitectureSpec, channels: dict) -> list:
    return trace_layers(build_network(describe_network(spec, channels, "x")), spec.example_input())


def finished_job(make_job, owner, media, files=(0, 1)):
    """A finished job with iterations 0 and 1 (the final one); ``files``: the points whose file is kept."""
    job = make_job(owner, status="finished", result={"iterations": 2, "channels": PRUNED})
    for number in (0, 1):
        Iteration.objects.create(job=job, number=number, resource=1.0, macs=1, params=1, holdout_accuracy=0.9,
                                 record={"channels": PRUNED if number else {"features.4.0": 96}})
    folder = media / "jobs" / str(job.pk)
    folder.mkdir(parents=True)
    for number in files:
        (folder / f"iteration_{number:03d}.pt").write_bytes(b"weights")
    return job


# --------------------------------------------------------------------------- from the pages


def test_a_model_measured_from_its_page_shows_runs_stats_and_layers(owner_client, owner, model, system_device,
                                                                    workers):
    response = owner_client.get(reverse("model_detail", args=[model.pk]))
    assert reverse("measurement_start") in page(response) and "Measure on" in page(response)
    assert f'<option value="{system_device.pk}">{escape(system_device.name)}</option>' in response.content.decode()

    response = owner_client.post(reverse("measurement_start"), {"model": model.pk, "device": system_device.pk})
    measurement = MeasurementRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("measurement_detail",
                                                                           args=[measurement.pk])
    layers = traced(SPEC, {})
    distinct = list(dict.fromkeys([CALL_OVERHEAD_SIGNATURE, *(layer.signature for layer in layers)]))
    assert (measurement.job_id, measurement.owner, measurement.reason) == (None, owner, "measure model 'tiny net'")
    assert measurement.networks == [describe_network(SPEC, {}, "model 'tiny net'")]
    assert measurement.signatures == [s.to_dict() for s in distinct]  # an empty table: every layer
    assert measurement.example_shape == [1, 1, 8, 8]
    assert workers.requests == [measurement.pk]

    waiting = owner_client.get(reverse("measurement_detail", args=[measurement.pk]))
    assert '<meta http-equiv="refresh"' in waiting.content.decode() and "Queued" in page(waiting)

    assert measure_request(workers.requests.pop()) == "done"
    measurement.refresh_from_db()
    result = measurement.results[0]
    assert result["n"] == RUNS and len(result["samples_ms"]) == RUNS
    assert TimingStats.from_samples(result["samples_ms"]).median_ms == pytest.approx(result["median_ms"], abs=1e-5)

    done = owner_client.get(reverse("measurement_detail", args=[measurement.pk]))
    text = page(done)
    assert '<meta http-equiv="refresh"' not in done.content.decode() and "Done" in text
    chart = chart_data(done)
    assert chart["n"] == RUNS and sum(chart["counts"]) + chart["tail"] == RUNS
    assert f"{RUNS} timed runs" in text
    for label in ("Min", "p10", "Median", "p90", "Mean", "Std"):
        assert f"<th>{label} (ms)</th>" in text
    # The network's row: Min, p10, Median, ... as shown (rounded half up by floatformat, so
    # compared within the last digit, not as Python's format writes them).
    row = re.search(r"<tr><td>[^<]*</td>((?:<td>[0-9.]+</td>){6})<td>%d</td></tr>" % RUNS, done.content.decode())
    assert row, "the network's statistics row"
    cells = [float(cell) for cell in re.findall(r"<td>([0-9.]+)</td>", row.group(1))]
    assert cells[2] == pytest.approx(result["median_ms"], abs=1.01e-4)
    # Every traced layer has its row, the costliest first, and the sum is the engine's.
    assert sorted(layer_names(done)) == sorted(layer.name for layer in layers)
    raw = LatencyTableModel(device_table(system_device)).raw_ms([layer.signature for layer in layers])
    # The page rounds half up (floatformat), Python's format to the nearest binary value: compare
    # the shown figure within its last digit, not as text.
    shown = re.search(r"Table estimate of the whole network: <strong>([0-9.]+) ms", text)
    assert shown and float(shown.group(1)) == pytest.approx(raw, abs=1e-4)
    assert "uncalibrated" not in text  # no job of the user's measured a network on it
    costs = [row["cost_ms"] for row in measure_model.layer_breakdown(measurement).rows]
    assert costs == sorted(costs, reverse=True)
    assert "conv 3×3 /2, 16→16, 8×8, bn+relu" in text  # the stride-2 layer, summarised

    # The device page lists it, linked.
    device_page = owner_client.get(reverse("device_detail", args=[system_device.pk]))
    assert reverse("measurement_detail", args=[measurement.pk]) in device_page.content.decode()

    # Measured again: the table has every layer now, so only the network is timed.
    owner_client.post(reverse("measurement_start"), {"model": model.pk, "device": system_device.pk})
    again = MeasurementRequest.objects.exclude(pk=measurement.pk).get()
    assert again.signatures == [] and workers.requests == [again.pk]
    assert measure_request(workers.requests.pop()) == "done"
    second = owner_client.get(reverse("measurement_detail", args=[again.pk]))
    assert sorted(layer_names(second)) == sorted(layer.name for layer in layers)
    assert "the table had them all" in page(second)


def test_a_job_point_measured_from_the_job_page(owner_client, owner, make_job, media, system_device, workers):
    job = finished_job(make_job, owner, media, files=(1,))
    response = owner_client.get(reverse("job_detail", args=[job.pk]))
    html = response.content.decode()
    assert reverse("measurement_start") in html
    assert '<option value="final">final network (iteration 1)</option>' in html
    assert '<option value="0">' not in html  # its file is not kept

    owner_client.post(reverse("measurement_start"), {"job": job.pk, "iteration": "final",
                                                     "device": system_device.pk})
    measurement = MeasurementRequest.objects.get()
    assert measurement.job_id is None and measurement.reason == f"measure job #{job.pk} iteration 1 (final)"
    assert measurement.networks[0]["channels"] == PRUNED
    assert measure_request(workers.requests.pop()) == "done"
    done = owner_client.get(reverse("measurement_detail", args=[measurement.pk]))
    assert sorted(layer_names(done)) == sorted(layer.name for layer in traced(JOB_SPEC, PRUNED))
    assert chart_data(done)["n"] == RUNS
    # The job has no measured iteration on the device: the page does not speak of calibration.
    assert "uncalibrated" not in page(done)
    Iteration.objects.filter(job=job, number=1).update(measured_ms=0.5, resource_raw=0.7)
    job.settings = {"metric": "latency"}
    job.save()
    assert "This sum is uncalibrated" in page(owner_client.get(reverse("measurement_detail",
                                                                       args=[measurement.pk])))


def test_an_onnx_upload_is_measured_like_a_builtin_one(owner_client, owner, media, system_device, workers,
                                                     checks_in_process):
    from adaptation.netadapt import onnx_import
    from tests.test_onnx_import import PLAIN, onnx_bytes, trained_like
    from tests.test_onnx_upload import page_data

    torch.manual_seed(0)
    exported = onnx_bytes(trained_like(PLAIN.build()).eval(), PLAIN.example_input(),
                          dynamic_axes={"input": {0: "batch"}})
    owner_client.post(reverse("model_upload"), page_data(exported))
    upload = ModelUpload.objects.get(source="onnx")
    response = owner_client.post(reverse("measurement_start"), {"model": upload.pk, "device": system_device.pk})
    measurement = MeasurementRequest.objects.get()
    assert response["Location"] == reverse("measurement_detail", args=[measurement.pk])
    assert measurement.networks[0]["spec"] == {**upload.preflight["spec"], "path": upload.file.path}
    assert measurement.example_shape == [1, 1, 16, 16]
    onnx_import._CACHE.clear()  # as in the device's worker: converted again from the stored file
    assert measure_request(workers.requests.pop()) == "done"
    done = owner_client.get(reverse("measurement_detail", args=[measurement.pk]))
    layers = trace_layers(build_network(measurement.networks[0]), torch.zeros(1, 1, 16, 16))
    assert len(layers) == 8 and sorted(layer_names(done)) == sorted(layer.name for layer in layers)
    assert chart_data(done)["n"] == RUNS


def test_an_agent_device_gets_the_request_without_a_worker(owner_client, owner, model, workers):
    phone = add_device(owner, name="Pixel", facts={"onnxruntime": "1.17.0"})
    response = owner_client.post(reverse("measurement_start"), {"model": model.pk, "device": phone.pk})
    measurement = MeasurementRequest.objects.get()
    assert measurement.device == phone and workers.requests == []  # the agent pulls it
    waiting = page(owner_client.get(response["Location"]))
    assert "Waiting for Pixel (its agent program is offline)" in waiting


@pytest.mark.services
def test_a_measurement_on_an_agent_device_shows_the_histogram_of_its_runs(owner_client, owner, model, workers,
                                                                         settings):
    """The agent's side played in-process through its websocket (as tests/test_agent_protocol.py does):
    the request asks for samples, the agent's per-run times are stored and drawn."""
    import onnxruntime as ort
    from asgiref.sync import async_to_sync
    from channels.testing import WebsocketCommunicator

    from devices.pairing import new_pairing, redeem
    from webapp.asgi import application

    settings.AGENT_POLL_SECONDS = 0.05
    phone = add_device(owner, name="Pixel", threads=1)
    code, _ = new_pairing(phone)
    token = redeem(code, {"os": "Android"})[1]
    response = owner_client.post(reverse("measurement_start"), {"model": model.pk, "device": phone.pk})
    measurement = MeasurementRequest.objects.get()
    assert measurement.device == phone and workers.requests == []
    samples = [round(0.2 + 0.01 * ((i * 7) % 30) + (0.5 if i % 97 == 0 else 0.0), 6) for i in range(RUNS)]
    stats = TimingStats.from_samples(samples).to_dict()
    n_layers = len(measurement.signatures)

    async def agent():
        socket = WebsocketCommunicator(application, "/ws/agent/", headers=[
            (b"origin", b"http://localhost"), (b"host", b"localhost"), (b"authorization", f"Token {token}".encode())])
        assert (await socket.connect(timeout=5))[0]
        await socket.send_json_to({"type": "hello", "protocol": 1, "agent": "test", "runtime": "onnxruntime",
                                   "runtime_version": ort.__version__, "facts": {"os": "Android"}})
        assert (await socket.receive_json_from(timeout=5))["type"] == "welcome"
        offer = await socket.receive_json_from(timeout=5)
        assert (offer["request"], offer["samples"], offer["pending"]) == (measurement.pk, True, n_layers)
        await socket.send_json_to({"type": "layers", "request": measurement.pk,
                                   "results": {str(i): stats for i in range(n_layers)}})
        assert (await socket.receive_json_from(timeout=5))["signatures_done"] == n_layers
        await socket.send_json_to({"type": "networks", "request": measurement.pk,
                                   "results": [{**stats, "samples_ms": samples}]})
        assert (await socket.receive_json_from(timeout=5))["status"] == "done"
        await socket.disconnect()

    async_to_sync(agent)()
    measurement.refresh_from_db()
    assert measurement.status == "done" and measurement.results == [{**stats, "samples_ms": samples}]
    done = owner_client.get(response["Location"])
    text = page(done)
    chart = chart_data(done)
    assert chart["n"] == RUNS and sum(chart["counts"]) + chart["tail"] == RUNS
    assert "Distribution of the runs" in text and f"{RUNS} timed runs" in text
    assert "statistics only" not in text
    assert sorted(layer_names(done)) == sorted(layer.name for layer in traced(SPEC, {}))


def test_an_older_agents_measurement_says_why_it_has_no_histogram(owner_client, owner, model, workers):
    phone = add_device(owner, name="Pixel", facts={"onnxruntime": "1.17.0"})
    owner_client.post(reverse("measurement_start"), {"model": model.pk, "device": phone.pk})
    measurement = MeasurementRequest.objects.get()
    MeasurementRequest.objects.filter(pk=measurement.pk).update(  # as an agent without samples ends it
        status="done", results=[TimingStats.from_samples([0.2, 0.3]).to_dict()])
    text = page(owner_client.get(reverse("measurement_detail", args=[measurement.pk])))
    assert "Distribution of the runs" not in text
    assert "No per-run times: the agent program sent statistics only" in text
    assert reverse("agent_download") in text


def test_a_failed_measurement_says_why_and_stops_reloading(owner_client, model, system_device, workers):
    owner_client.post(reverse("measurement_start"), {"model": model.pk, "device": system_device.pk})
    measurement = MeasurementRequest.objects.get()
    fail_request(measurement, "measuring on This server's CPU failed: RuntimeError: out of memory")
    response = owner_client.get(reverse("measurement_detail", args=[measurement.pk]))
    assert '<meta http-equiv="refresh"' not in response.content.decode()
    assert "Failed" in page(response) and escape("RuntimeError: out of memory") in page(response)
    assert "Distribution of the runs" not in page(response)


# --------------------------------------------------------------------------- the API


def test_the_api_measures_an_iteration_and_reports_the_results(api, owner, make_job, media, system_device,
                                                               workers):
    job = finished_job(make_job, owner, media)
    response = api.post(f"/api/v1/devices/{system_device.pk}/measure", {"job": job.pk, "iteration": 0},
                        format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["networks"] == [f"job #{job.pk} iteration 0"]
    assert body["page"] == reverse("measurement_detail", args=[body["id"]]) and body["signatures"] > 0
    assert workers.requests == [body["id"]]
    assert api.get(f"/api/v1/measurements/{body['id']}").json()["results"] == []

    assert measure_request(workers.requests.pop()) == "done"
    done = api.get(f"/api/v1/measurements/{body['id']}").json()
    assert done["status"] == "done" and done["error"] == "" and done["signatures_done"] == body["signatures"]
    (result,) = done["results"]
    assert result["n"] == RUNS and len(result["samples_ms"]) == RUNS and result["min_ms"] > 0

    # Without an iteration: the final network; a model by its id.
    final = api.post(f"/api/v1/devices/{system_device.pk}/measure", {"job": job.pk}, format="json").json()
    assert final["networks"] == [f"job #{job.pk} iteration 1 (final)"]
    assert 0 < final["signatures"] < body["signatures"]  # only the layers the pruning changed
    model = api.post(f"/api/v1/devices/{system_device.pk}/measure", {"model": job.model.pk}, format="json")
    assert model.status_code == 202 and model.json()["networks"] == [f"model '{job.model.name}'"]


def test_a_network_that_cannot_be_exported_is_a_clear_400(api, model, system_device, monkeypatch, media):
    """The network's file is exported when the measurement is asked for: an exporter's failure
    (simulated: the preflight check exports every upload) is the answer, not a 500 or a request."""
    def broken(model, example, runtime):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(network_files, "network_file", broken)
    response = api.post(f"/api/v1/devices/{system_device.pk}/measure", {"model": model.pk}, format="json")
    assert response.status_code == 400
    assert response.json()["non_field_errors"] == [
        "Model 'tiny net' could not be exported for onnxruntime: RuntimeError: unsupported operator."]
    assert not MeasurementRequest.objects.exists() and not list(media.glob("measurements/*"))


def test_job_requests_keep_no_samples(owner, make_job, system_device, workers, media):
    job = make_job(owner, status="waiting")
    networks = [describe_network(JOB_SPEC, {}, "o")]
    request = open_request(owner=owner, device=system_device, job_id=job.pk, reason="original", runtime="onnxruntime",
                           threads=1, example_shape=[1, 1, 8, 8], networks=networks,
                           network_files=export_networks(networks, [1, 1, 8, 8], "onnxruntime"))
    assert measure_request(request.pk) == "done"
    request.refresh_from_db()
    assert "samples_ms" not in request.results[0] and request.results[0]["n"] == RUNS


# --------------------------------------------------------------------------- ownership


def test_only_the_owner_sees_a_measurement(client, owner_client, owner, stranger, model, system_device, workers):
    owner_client.post(reverse("measurement_start"), {"model": model.pk, "device": system_device.pk})
    measurement = MeasurementRequest.objects.get()
    client.force_login(stranger)
    assert client.get(reverse("measurement_detail", args=[measurement.pk])).status_code == 404
    other = APIClient()
    other.force_authenticate(stranger)
    assert other.get(f"/api/v1/measurements/{measurement.pk}").status_code == 404
    assert client.get(reverse("device_detail", args=[system_device.pk])).content.decode().count(
        reverse("measurement_detail", args=[measurement.pk])) == 0


def test_strangers_models_jobs_and_devices_are_not_found(client, owner, stranger, model, make_job, media,
                                                         system_device, workers):
    job = finished_job(make_job, owner, media)
    phone = add_device(owner, name="Pixel")
    theirs = uploaded_model(stranger, "bob's")
    client.force_login(stranger)
    start = reverse("measurement_start")
    assert client.post(start, {"model": model.pk, "device": system_device.pk}).status_code == 404
    assert client.post(start, {"job": job.pk, "iteration": 0, "device": system_device.pk}).status_code == 404
    # Their own model on someone else's device: refused with a message, back to their model.
    response = client.post(start, {"model": theirs.pk, "device": phone.pk}, follow=True)
    assert "not one you can measure on" in page(response)
    assert response.redirect_chain[-1][0] == reverse("model_detail", args=[theirs.pk])
    assert f'<option value="{phone.pk}">' not in page(client.get(reverse("model_detail", args=[theirs.pk])))

    api = APIClient()
    api.force_authenticate(stranger)
    assert api.post(f"/api/v1/devices/{system_device.pk}/measure", {"model": model.pk},
                    format="json").status_code == 404
    assert api.post(f"/api/v1/devices/{system_device.pk}/measure", {"job": job.pk},
                    format="json").status_code == 404
    assert api.post(f"/api/v1/devices/{phone.pk}/measure", {"model": theirs.pk}, format="json").status_code == 404
    assert not MeasurementRequest.objects.exists() and workers.requests == []


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("fields, message", [
    ({"iteration": 99}, "has no iteration 99."),
    ({"iteration": 0}, "The network file of iteration 0 of job"),
    ({"iteration": -1}, "is the original network: measure model"),
    ({"iteration": "two"}, "'two' is not a valid iteration number."),
])
def test_bad_points_are_refused_with_a_message(owner_client, api, owner, make_job, media, system_device, workers,
                                               fields, message):
    job = finished_job(make_job, owner, media, files=(1,))
    response = owner_client.post(reverse("measurement_start"), {"job": job.pk, "device": system_device.pk,
                                                                **fields}, follow=True)
    assert escape(message) in page(response)
    assert response.redirect_chain[-1][0] == reverse("job_detail", args=[job.pk])
    response = api.post(f"/api/v1/devices/{system_device.pk}/measure", {"job": job.pk, **fields}, format="json")
    assert response.status_code == 400 and message in response.json()["iteration"][0]
    assert not MeasurementRequest.objects.exists() and workers.requests == []


def test_other_refusals(owner_client, api, owner, model, make_job, media, system_device, workers):
    running = make_job(owner, status="running")
    response = owner_client.post(reverse("measurement_start"), {"job": running.pk, "device": system_device.pk},
                                 follow=True)
    assert f"Job #{running.pk} has no final network: it has not finished." in page(response)
    assert "No point of this job can be measured yet" in page(response)
    response = owner_client.post(reverse("measurement_start"), {"model": model.pk, "device": 9999}, follow=True)
    assert "not one you can measure on" in page(response)

    url = f"/api/v1/devices/{system_device.pk}/measure"
    assert "non_field_errors" in api.post(url, {}, format="json").json()
    assert api.post(url, {"model": model.pk, "job": running.pk}, format="json").json() == {
        "non_field_errors": ["Give a model or a job, not both."]}
    assert "iteration" in api.post(url, {"model": model.pk, "iteration": 1}, format="json").json()
    assert api.post("/api/v1/devices/9999/measure", {"model": model.pk}, format="json").status_code == 404

    ModelUpload.objects.filter(pk=model.pk).update(status="checking")
    assert api.post(url, {"model": model.pk}, format="json").json() == {"model": [
        "Model 'tiny net' is still being checked: only a checked model can be measured."]}
    onnx = ModelUpload.objects.create(owner=owner, name="exported", source="onnx", num_classes=10, in_channels=1,
                                      resolution=8, file="models/exported.onnx", status="ready",
                                      preflight={"spec": {"arch": "onnx", "sha256": "0" * 64, "num_classes": 10,
                                                          "in_channels": 1, "resolution": 8}})
    response = api.post(url, {"model": onnx.pk}, format="json")
    assert response.status_code == 400
    assert response.json()["model"][0].startswith(
        "Model 'exported' is an ONNX upload whose network cannot be rebuilt from its stored file (OnnxImportError:")
    phone = add_device(owner, name="Pi", runtime="torch")
    ModelUpload.objects.filter(pk=model.pk).update(status="ready")
    response = api.post(f"/api/v1/devices/{phone.pk}/measure", {"model": model.pk}, format="json")
    assert response.status_code == 400 and "measures with ONNX Runtime only" in response.json()["device"][0]
    assert not MeasurementRequest.objects.exists() and workers.requests == []


# --------------------------------------------------------------------------- pieces


def test_samples_are_those_the_stats_summarise():
    protocol = MeasureProtocol(threads=1, warmup=1, rounds=2, runs_per_round=7, max_retries=0)
    counter = {"a": 0, "b": 0}

    def runner(name):
        return lambda: counter.__setitem__(name, counter[name] + 1)

    timed = time_with_retries_and_samples([runner("a"), runner("b")], protocol)
    assert [len(t.samples_ms) for t in timed] == [14, 14] and counter == {"a": 15, "b": 15}
    for t in timed:
        assert t.stats == TimingStats.from_samples(t.samples_ms)
    assert [s.n for s in time_with_retries([runner("a")], protocol)] == [14]


def test_kept_samples_and_histogram():
    samples = [0.1 + i * 1e-9 for i in range(2500)]
    kept = kept_samples(samples)
    assert len(kept) == MAX_SAMPLES and kept[0] == 0.1 and kept == sorted(kept)
    assert kept_samples([0.12345678]) == [0.123457]

    values = [1.0] * 50 + [1.5] * 45 + [2.0] * 4 + [40.0]
    bars = measure_model.histogram(values, bins=10)
    assert sum(bars["counts"]) + bars["tail"] == 100 and bars["tail"] == 1 and bars["tail_from"] == 2.0
    assert bars["counts"][0] == 50 and bars["counts"][-1] == 4 and len(bars["edges"]) == 11
    assert measure_model.histogram([0.5] * 3) == {"edges": [0.5, 0.5], "counts": [3], "tail": 0,
                                                  "tail_from": None}


def test_signature_summaries():
    summaries = {layer.name: measure_model.signature_summary(layer.signature) for layer in traced(SPEC, {})}
    assert summaries["features.0.0"] == "conv 3×3, 1→16, 8×8, bn+relu"
    assert summaries["classifier"] == "linear 128→10"
