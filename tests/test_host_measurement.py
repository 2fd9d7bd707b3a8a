"""A measurement of this host's CPU pauses a proposal's fine-tune running beside it.

Real pieces only: a job made by the services, its proposal fine-tuned by the proposal task in a
thread (as a worker would), a real measurement request measured by the device's task, a cancel
through the job's page. The assertions read what each side recorded, never durations.
"""
from __future__ import annotations

import re
import threading
import time

import pytest
from django.urls import reverse

from adaptation import tasks
from adaptation.models import Job, JobEvent
from adaptation.netadapt.architectures import describe_network
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation.network_files import network_files
from devices.host import host_lock
from devices.models import MeasurementRequest
from devices.requests import open_request
from devices.tasks import measure_request

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("media")]

# A MACs job (its proposals need no measurement) whose short-term fine-tune is far longer than
# the test: the cancel at the end stops it.
SETTINGS = {"metric": "macs", "budget": 0.5, "initial_reduction": 0.1, "decay": 0.9,
            "short_term_steps": 20_000, "long_term_epochs": 0, "batch_size": 64, "max_iterations": 2,
            "holdout": 0.15}
WAIT_S = 120  # a bound on waiting for a fact, not a timing assumption


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def whole(spec: ArchitectureSpec, label: str) -> dict:
    """``open_request``'s arguments for one whole network, its file exported as a job exports it."""
    networks = [describe_network(spec, {}, label)]
    return {"networks": networks, "network_files": network_files(networks, [1, 1, 8, 8], "onnxruntime")}


def test_a_measurement_of_this_host_pauses_a_running_proposal_fine_tune(
        client, owner, make_job, system_device, workers, sent_run_job):
    job = make_job(owner, settings=SETTINGS)
    tasks.run_job(job.pk)  # the job plans its first iteration and parks behind its proposals
    job.refresh_from_db()
    assert job.status == "waiting" and workers.chords
    job_id, iteration, indices = workers.chords.pop(0)

    outcome: list[str] = []
    fine_tune = threading.Thread(target=lambda: outcome.append(
        tasks.evaluate_proposal_task(job_id, iteration, indices[0])))
    fine_tune.start()
    try:
        wait_until(lambda: host_lock().running_trainers() == 1, "the fine-tune to hold the host")
        spec = ArchitectureSpec("plain_cnn", 10, 1, 1.0, 8)
        request = open_request(owner=owner, device=system_device, reason="a check", runtime="onnxruntime",
                               threads=1, example_shape=[1, 1, 8, 8],
                               **whole(spec, "original"))
        assert measure_request(request.pk) == "done"
    finally:
        client.force_login(owner)
        client.post(reverse("job_cancel", args=[job_id]))
        fine_tune.join(WAIT_S)
    assert not fine_tune.is_alive() and outcome == ["stale"]  # stopped by the cancel, wrote nothing

    request = MeasurementRequest.objects.get(pk=request.pk)
    assert request.status == "done" and request.results[0]["min_ms"] > 0
    assert request.host_lock["trainers"] == 1  # the fine-tune was running when it asked
    assert request.host_lock["held"] is True  # and paused: the measurement had the host to itself
    stopped = [e.payload["message"] for e in JobEvent.objects.filter(job_id=job_id, type="job.log")
               if e.payload["message"].startswith(f"Proposal {indices[0]} of iteration {iteration} stopped")]
    # Its hook recorded the wait (once per attempt: a noisy attempt is retaken, devices.host).
    assert len(stopped) == 1 and re.search(r"It paused (once|\d+ times) \([\d.]+ s\) for measurements on this host",
                                           stopped[0]), stopped
    assert Job.objects.get(pk=job_id).status == "cancelled"
    assert host_lock().running_trainers() == 0  # the stopped fine-tune holds nothing


def test_a_measurement_that_cannot_have_the_host_is_retaken_then_kept_and_the_job_log_says_so(
        settings, owner, make_job, system_device, workers, sent_run_job):
    settings.HOST_LOCK_WAIT_SECONDS, settings.MEASURE_RETAKES = 0.05, 1
    job = make_job(owner, settings=SETTINGS)
    spec = ArchitectureSpec("plain_cnn", 10, 1, 1.0, 8)
    request = open_request(owner=owner, device=system_device, job_id=job.pk, reason="iteration 3 network",
                           runtime="onnxruntime", threads=1, example_shape=[1, 1, 8, 8],
                           **whole(spec, "iteration 3"))
    with host_lock().trainer() as stuck:  # holds the host and never reaches its next checkpoint
        stuck.checkpoint()
        assert measure_request(request.pk) == "done"
    request.refresh_from_db()
    assert request.status == "done" and request.results[0]["min_ms"] > 0  # kept, not failed
    note = request.host_lock
    assert (note["held"], note["retaken"], note["kept_disturbed"], note["trainers"]) == (False, 1, True, 1)
    assert note["why"] == ["the host was not free within 0.05 s"] * 2
    lines = [e.payload["message"] for e in JobEvent.objects.filter(job=job, type="job.log")]
    assert ("The measurement of iteration 3 network waited" in lines[-1] and "for 1 fine-tune on this host" in lines[-1]
            and "retaken once (the host was not free within 0.05 s)" in lines[-1]
            and "kept the best of 2 disturbed attempts" in lines[-1]), lines


def test_a_measurement_on_a_quiet_host_is_taken_once_and_not_told(owner, make_job, system_device, workers,
                                                                  sent_run_job, settings):
    settings.MEASURE_RETAKES = 0  # whatever the spread on a busy test machine: one attempt
    job = make_job(owner, settings=SETTINGS)
    spec = ArchitectureSpec("plain_cnn", 10, 1, 1.0, 8)
    request = open_request(owner=owner, device=system_device, job_id=job.pk, reason="original network",
                           runtime="onnxruntime", threads=1, example_shape=[1, 1, 8, 8],
                           **whole(spec, "original"))
    assert measure_request(request.pk) == "done"
    request.refresh_from_db()
    assert (request.host_lock["held"], request.host_lock["trainers"], request.host_lock["retaken"]) == (True, 0, 0)
    lines = [e.payload["message"] for e in JobEvent.objects.filter(job=job, type="job.log")]
    told = [line for line in lines if line.startswith("The measurement of original network")]
    # Told only when its spread was too wide for the protocol (then kept, and said so).
    assert told == ([f"The measurement of original network kept a disturbed attempt ({request.host_lock['why'][0]})."]
                    if request.host_lock["why"] else []), told
