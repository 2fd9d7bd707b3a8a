"""A job on a phone chooses how it estimates latency: the job form stores ``latency_model``
"auto", and once the phone has measured the original network's layers (each with its per-call
probe) the runner keeps the calibrated look-up table, or measures every candidate whole when most
of those entries drown in the probe (adaptation.job_runner; devices.lut.DROWN_SHARE).

The job is created through the job form, the phone pairs and measures through its websocket as
the phone page does (tests/test_phone_protocol.py), and the job runs as ``run_job`` runs it.
"""
from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.urls import reverse

from adaptation import tasks
from adaptation.models import Job, JobEvent
from adaptation.netadapt.spec import ArchitectureSpec
from devices.measure.signature import LayerSignature
from devices.models import MeasurementRequest
from tests.test_job_pages import form_data, uploaded_model
from tests.test_phone_protocol import STATS, TIMEOUT, paired_socket, phone, token  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

#: Wide enough that one group's cut can meet an iteration's target on the staircase phone.
WIDE = ArchitectureSpec("plain_cnn", 10, 1, 0.5, 8)


def serve_as_phone(token: str, probe_ms: float) -> dict:
    """The phone page's part of one request: every layer with its probe, then the networks."""
    async def scenario() -> dict:
        socket = await paired_socket(token)
        offer = await socket.receive_json_from(timeout=TIMEOUT)
        assert offer["type"] == "request", offer
        if offer["signatures"]:
            await socket.send_json_to({"type": "layers", "request": offer["request"], "results": {
                str(i): {**STATS, "overhead_ms": probe_ms} for i in range(offer["signatures"])}})
            assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "stored"
        await socket.send_json_to({"type": "networks", "request": offer["request"],
                                   "results": [STATS] * len(offer["networks"])})
        assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "done"
        await socket.disconnect()
        return offer

    return async_to_sync(scenario)()


def say_hello(token: str) -> None:
    """The phone opens its page once: the server learns its runtime version (its table's key)."""
    async def scenario() -> None:
        socket = await paired_socket(token)
        await socket.disconnect()

    async_to_sync(scenario)()


def requests_of(job: Job) -> list[MeasurementRequest]:
    return list(MeasurementRequest.objects.filter(job_id=job.pk).order_by("pk"))


@pytest.mark.parametrize("probe_ms, chosen", [(0.05, "whole"), (0.001, "table")],
                         ids=["entries drown: whole networks", "entries stand out: the table"])
def test_a_phone_job_chooses_its_latency_estimate_from_the_probes(client, owner, phone, token, media,
                                                                   digits_dataset, sent_run_job, probe_ms, chosen):
    say_hello(token)
    client.force_login(owner)
    model = uploaded_model(owner)
    response = client.post(reverse("job_create"), form_data(model, digits_dataset, phone, budget=90,
                                                            max_iterations=1, short_term_steps=1,
                                                            long_term_epochs=0))
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get(owner=owner)
    assert job.settings["latency_model"] == "auto"

    # First the original network's layers: nothing to choose from yet.
    assert tasks.run_job(job.pk) == "waiting"
    (layers,) = requests_of(job)
    assert layers.signatures and not layers.networks
    job.refresh_from_db()
    assert job.settings["latency_model"] == "auto"
    served = serve_as_phone(token, probe_ms)
    assert served["request"] == layers.pk

    # Their entries are in: the next run chooses, says why, and keeps the choice.
    assert tasks.run_job(job.pk) == "waiting"
    job.refresh_from_db()
    assert job.settings["latency_model"] == chosen
    (log,) = [e.payload["message"] for e in JobEvent.objects.filter(job=job, type="job.log")
              if e.payload["message"].startswith("Latency estimate:")]
    drowning = len(layers.signatures) - 1 if chosen == "whole" else 0  # the call-overhead entry aside
    assert f"{drowning} of the original network's" in log
    assert ("measured whole" in log) == (chosen == "whole")
    original = requests_of(job)[-1]
    assert not original.signatures and [n["label"] for n in original.networks] == ["original"]
    serve_as_phone(token, probe_ms)

    # The first iteration's candidates: measured whole, or their new layers timed for the table.
    assert tasks.run_job(job.pk) == "waiting"
    candidates = requests_of(job)[-1]
    assert candidates.pk != original.pk
    if chosen == "whole":
        assert not candidates.signatures and len(candidates.networks) >= 1
    else:
        assert candidates.signatures and not candidates.networks


@pytest.mark.parametrize("given, stored", [("", None), ("table", "table"), ("whole", "whole")])
def test_the_job_form_stores_the_estimate_chosen_for_other_devices(client, owner, media, digits_dataset,
                                                                    system_device, enqueued, given, stored):
    """Left automatic, a device without probes uses the table (nothing stored: the runner's default)."""
    client.force_login(owner)
    model = uploaded_model(owner)
    client.post(reverse("job_create"), form_data(model, digits_dataset, system_device, latency_model=given))
    assert Job.objects.get(owner=owner).settings.get("latency_model") == stored


def test_the_job_form_refuses_an_unknown_estimate(client, owner, media, digits_dataset, system_device, enqueued):
    client.force_login(owner)
    model = uploaded_model(owner)
    response = client.post(reverse("job_create"), form_data(model, digits_dataset, system_device,
                                                            latency_model="guess"))
    assert response.status_code == 200 and not Job.objects.exists()
    assert "Select a valid choice" in response.content.decode()


def staircase_stats(ms: float) -> dict:
    return {**STATS, "min_ms": ms, "p10_ms": ms * 1.05, "median_ms": ms * 1.1, "p90_ms": ms * 1.3,
            "mean_ms": ms * 1.1, "std_ms": ms * 0.1}


def serve_as_staircase_phone(token: str) -> dict:
    """A phone whose layers, timed alone, take time in proportion to their MACs while whole
    networks barely depend on their channels: the staircase of blocked kernels, where most of
    what the table sums as a saving is not saved. It reads what it was sent as the phone page
    does, from the request's signatures and networks."""
    async def scenario() -> dict:
        socket = await paired_socket(token)
        offer = await socket.receive_json_from(timeout=TIMEOUT)
        assert offer["type"] == "request", offer
        request = await database_sync_to_async(MeasurementRequest.objects.get)(pk=offer["request"])
        if offer["signatures"]:
            await socket.send_json_to({"type": "layers", "request": offer["request"], "results": {
                str(i): {**staircase_stats(LayerSignature.from_dict(sig).macs() * 1e-6), "overhead_ms": 1e-5}
                for i, sig in enumerate(request.signatures)}})
            assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "stored"
        await socket.send_json_to({"type": "networks", "request": offer["request"],
                                   "results": [staircase_stats(0.3 + 1e-4 * sum(n["channels"].values()))
                                               for n in request.networks]})
        assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "done"
        await socket.disconnect()
        return offer

    return async_to_sync(scenario)()


def test_a_table_job_whose_table_misleads_measures_candidates_whole_and_says_so(
        client, owner, phone, token, media, digits_dataset, workers):
    say_hello(token)
    client.force_login(owner)
    model = uploaded_model(owner, WIDE)
    response = client.post(reverse("job_create"), form_data(
        model, digits_dataset, phone, latency_model="table", budget=5, initial_reduction=0.25, decay=0.9,
        max_iterations=4, short_term_steps=1, long_term_epochs=0, preset="paper"))
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get(owner=owner)
    for _ in range(40):
        job = workers.drive(job)
        if job.status != Job.Status.WAITING:
            break
        serve_as_staircase_phone(token)
    assert job.status == Job.Status.FINISHED, job.error

    notes = [e.payload for e in JobEvent.objects.filter(job=job, type="job.log").order_by("seq")
             if "no longer predicts" in e.payload["message"]]
    assert len(notes) == 1 and notes[0]["level"] == "warning"
    k = int(notes[0]["message"].split()[1].rstrip(":"))  # "Iteration k: The look-up table ..."
    estimates = [it.record["latency_estimate"] for it in job.iterations.filter(number__gte=0).order_by("number")]
    assert k >= 2 and estimates == ["table"] * (k + 1) + ["whole"] * (len(estimates) - k - 1)
    assert len(estimates) > k + 1
    # After the note, the phone was sent whole candidate networks, not layers.
    last_layers = max(r.pk for r in requests_of(job) if r.signatures)
    assert any(n["label"].startswith("candidate") for r in requests_of(job) if r.pk > last_layers
               for n in r.networks)
    html = client.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert f"proposed candidates measured whole from iteration {k + 1} on" in html
