"""Measurement requests: queued per device, measured into its table, the waiting job re-enqueued;
the sweep re-sends requests of dead local workers and gives up on agents that stay away."""
from __future__ import annotations

import os
import time
from datetime import timedelta

import onnx
import pytest
from django.utils import timezone

from adaptation.models import Job
from adaptation.netadapt.architectures import describe_network
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation.network_files import export_networks
from devices import requests
from devices.measure.tracing import trace_layers
from devices.models import LatencyEntry, MeasurementRequest
from devices.request_files import ORPHAN_SECONDS, write_files
from devices.requests import (claim_request, complete_request, device_table, fail_request,
                              open_request, pending_signatures, store_layer_results, sweep_requests)
from devices.tasks import measure_request
from tests.user_objects import add_device

pytestmark = pytest.mark.django_db(transaction=True)

SPEC = ArchitectureSpec("plain_cnn", 10, 1, 0.5, 8)


@pytest.fixture
def signatures():
    model = SPEC.build().eval()
    return [s.to_dict() for s in dict.fromkeys(t.signature for t in trace_layers(model, SPEC.example_input()))]


@pytest.fixture
def sent(monkeypatch):
    """Requests handed to local devices' queues (nothing reaches a broker)."""
    calls: list[int] = []
    monkeypatch.setattr(requests, "dispatch", lambda request_id, device_id, kind: calls.append(request_id))
    return calls


def waiting_job(make_job, owner, **fields) -> Job:
    job = make_job(owner, **fields)
    Job.objects.filter(pk=job.pk).update(status="waiting", waiting_kind="measurement", waiting_for="x")
    return job


def test_a_local_request_is_measured_into_the_table_and_resumes_its_job(
        make_job, owner, system_device, signatures, sent, sent_run_job, media):
    job = waiting_job(make_job, owner)
    network = describe_network(SPEC, {}, "original")
    exports = []

    def exported():
        exports.append(1)
        return export_networks([network], [1, 1, 8, 8], "onnxruntime")

    request = open_request(owner=owner, device=system_device, job_id=job.pk, reason="original", runtime="onnxruntime",
                           threads=1, example_shape=[1, 1, 8, 8], signatures=signatures, networks=[network],
                           network_files=exported)
    assert sent == [request.pk]
    # The network's ONNX file is written when the request is stored: devices times it as it is.
    (name,) = request.network_files
    assert name.startswith("measurements/") and name.endswith("/0.onnx")
    onnx.checker.check_model(onnx.load_from_string((media / name).read_bytes()))
    # Asking again for the same thing in the same job gives the same request, and exports nothing.
    again = open_request(owner=owner, device=system_device, job_id=job.pk, reason="original", runtime="onnxruntime",
                         threads=1, example_shape=[1, 1, 8, 8], signatures=signatures, networks=[network],
                         network_files=exported)
    assert again.pk == request.pk and sent == [request.pk] and len(exports) == 1

    assert measure_request(request.pk) == "done"
    request.refresh_from_db()
    assert (request.status, request.signatures_done, request.error) == ("done", len(signatures), "")
    assert not (media / name).parent.exists()  # an ended request's files go
    assert len(request.results) == 1 and request.results[0]["min_ms"] > 0
    table = device_table(system_device)
    assert request.runtime_version == table.runtime_version
    assert len(table) == len(signatures)
    job.refresh_from_db()
    assert (job.status, job.waiting_kind, job.attempts) == ("queued", "", 0)
    assert sent_run_job == [job.pk]
    assert measure_request(request.pk) is None  # a duplicate message does nothing


def test_layers_stored_before_a_crash_are_not_measured_again(owner, system_device, signatures, sent):
    request = open_request(owner=owner, device=system_device, reason="layers", runtime="onnxruntime",
                           threads=1, example_shape=[1, 1, 8, 8], signatures=signatures)
    claimed = claim_request(request.pk, "worker:1")
    version = device_table(system_device).runtime_version
    first = pending_signatures(claimed, version)[0]
    stats = {"n": 5, "min_ms": 0.01, "p10_ms": 0.01, "median_ms": 0.02, "p90_ms": 0.03,
             "mean_ms": 0.02, "std_ms": 0.001}
    store_layer_results(claimed, {first[0]: stats}, version)
    assert [i for i, _ in pending_signatures(claimed, version)] == list(range(1, len(signatures)))
    assert MeasurementRequest.objects.get(pk=request.pk).signatures_done == 1
    with pytest.raises(ValueError, match="not measured"):
        complete_request(claimed, [], version)
    with pytest.raises(ValueError, match="layer index 99"):
        store_layer_results(claimed, {99: stats}, version)


def test_a_failed_request_resumes_its_job_which_then_fails_with_the_reason(
        make_job, owner, system_device, signatures, sent, sent_run_job):
    job = waiting_job(make_job, owner)
    request = open_request(owner=owner, device=system_device, job_id=job.pk, reason="layers", runtime="onnxruntime",
                           threads=1, example_shape=[1, 1, 8, 8], signatures=signatures)
    fail_request(request, "the phone ran out of memory")
    request.refresh_from_db()
    assert (request.status, request.error) == ("failed", "the phone ran out of memory")
    job.refresh_from_db()
    assert job.status == "queued" and sent_run_job == [job.pk]


def test_a_job_waits_until_its_last_open_request_is_done(make_job, owner, system_device, signatures, sent,
                                                          sent_run_job):
    job = waiting_job(make_job, owner)
    first, second = (open_request(owner=owner, device=system_device, job_id=job.pk, reason=str(n),
                                  runtime="onnxruntime", threads=1, example_shape=[1, 1, 8, 8],
                                  signatures=signatures[n:n + 1]) for n in range(2))
    fail_request(first, "gone")
    assert Job.objects.get(pk=job.pk).status == "waiting" and sent_run_job == []
    fail_request(second, "gone")
    assert Job.objects.get(pk=job.pk).status == "queued" and sent_run_job == [job.pk]


def test_the_sweep_resends_requests_of_dead_local_workers_and_old_queued_ones(
        owner, system_device, signatures, sent, settings):
    dead = open_request(owner=owner, device=system_device, reason="a", runtime="onnxruntime", threads=1,
                        example_shape=[1, 1, 8, 8], signatures=signatures[:1])
    claim_request(dead.pk, f"{__import__('socket').gethostname()}:999999999")  # no such process
    alive = open_request(owner=owner, device=system_device, reason="b", runtime="onnxruntime", threads=1,
                         example_shape=[1, 1, 8, 8], signatures=signatures[1:2])
    claim_request(alive.pk, "other-host:1")
    old = open_request(owner=owner, device=system_device, reason="c", runtime="onnxruntime", threads=1,
                       example_shape=[1, 1, 8, 8], signatures=signatures[2:3])
    MeasurementRequest.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(hours=1))
    sent.clear()

    assert sweep_requests()["resent"] == sorted([dead.pk, old.pk])
    assert sorted(sent) == sorted([dead.pk, old.pk])
    assert MeasurementRequest.objects.get(pk=dead.pk).status == "queued"
    assert MeasurementRequest.objects.get(pk=alive.pk).status == "running"


def test_the_sweep_gives_up_on_an_agent_that_stays_away(make_job, owner, signatures, sent, sent_run_job,
                                                         settings):
    settings.DEVICE_WAIT_SECONDS = 3600
    phone = add_device(owner, name="phone", last_seen=timezone.now() - timedelta(hours=5))
    job = waiting_job(make_job, owner, device=phone)
    request = open_request(owner=owner, device=phone, job_id=job.pk, reason="layers", runtime="onnxruntime",
                           threads=1, example_shape=[1, 1, 8, 8], signatures=signatures)
    assert sent == [request.pk]  # dispatch is told; for an agent it sends nothing (it pulls)
    assert sweep_requests()["expired"] == []  # not yet
    MeasurementRequest.objects.filter(pk=request.pk).update(created=timezone.now() - timedelta(hours=2))
    assert sweep_requests()["expired"] == [request.pk]
    request.refresh_from_db()
    assert request.status == "failed"
    assert request.error.startswith("phone did not measure within 1 h (offline, last seen ")
    assert Job.objects.get(pk=job.pk).status == "queued" and sent_run_job == [job.pk]


def test_an_agent_table_is_the_one_of_the_version_it_reported(owner):
    phone = add_device(owner, name="phone", facts={"onnxruntime": "1.20.0"})
    assert device_table(phone).runtime_version == "1.20.0"
    phone.runtime = "torch"
    with pytest.raises(ValueError, match="ONNX Runtime only"):
        device_table(phone)


def test_requests_of_a_device_go_with_it(owner, signatures, sent):
    phone = add_device(owner, name="phone")
    open_request(owner=owner, device=phone, reason="x", runtime="onnxruntime", threads=1,
                 example_shape=[1, 1, 8, 8], signatures=signatures)
    phone.delete()
    assert not MeasurementRequest.objects.exists() and not LatencyEntry.objects.exists()


# --------------------------------------------------------------------------- the networks' files


def whole(label: str = "original", runtime: str = "onnxruntime") -> dict:
    """``open_request``'s arguments for one whole network, its file exported as a job exports it."""
    networks = [describe_network(SPEC, {}, label)]
    return {"networks": networks, "network_files": export_networks(networks, [1, 1, 8, 8], runtime)}


def folder(media, request: MeasurementRequest):
    (name,) = request.network_files
    return (media / name).parent


def test_a_request_for_whole_networks_needs_their_files(owner, system_device, sent, media):
    """devices times files; it cannot build a network from its description."""
    networks = [describe_network(SPEC, {}, "original")]
    asked = {"owner": owner, "device": system_device, "reason": "x", "runtime": "onnxruntime", "threads": 1,
             "example_shape": [1, 1, 8, 8], "networks": networks}
    with pytest.raises(ValueError, match="needs their files"):
        open_request(**asked)
    with pytest.raises(ValueError, match=r"1 network\(s\) but 2 file\(s\)"):
        open_request(**asked, network_files=[b"a", b"b"])
    assert not MeasurementRequest.objects.exists() and not list(media.glob("measurements/*"))


def test_a_torch_runtime_times_the_torchscript_file_of_its_request(owner, system_device, sent, media):
    request = open_request(owner=owner, device=system_device, reason="eager", runtime="torch", threads=1,
                           example_shape=[1, 1, 8, 8], **whole(runtime="torch"))
    assert request.network_files[0].endswith("/0.pt")
    assert measure_request(request.pk) == "done"
    request.refresh_from_db()
    assert request.results[0]["min_ms"] > 0 and len(request.results[0]["samples_ms"]) > 0


def test_a_local_request_stored_before_requests_carried_files_fails_clearly_and_wakes_its_job(
        make_job, owner, system_device, sent, sent_run_job):
    job = waiting_job(make_job, owner)
    request = open_request(owner=owner, device=system_device, job_id=job.pk, reason="original",
                           runtime="onnxruntime", threads=1, example_shape=[1, 1, 8, 8], **whole())
    MeasurementRequest.objects.filter(pk=request.pk).update(network_files=[])  # as migration 0007 left it
    assert measure_request(request.pk) == "failed"
    request.refresh_from_db()
    assert request.error == (f"measurement request {request.pk} was stored by an earlier version of the server, "
                             "before requests carried their networks' files, and cannot be measured: its job "
                             "asks again when it resumes")
    assert Job.objects.get(pk=job.pk).status == "queued" and sent_run_job == [job.pk]


def test_the_files_of_a_request_go_when_it_ends_or_its_job_is_deleted(make_job, owner, system_device, sent, media):
    job = make_job(owner)
    failed, dropped, kept = (open_request(owner=owner, device=system_device, job_id=job.pk, reason=label,
                                          runtime="onnxruntime", threads=1, example_shape=[1, 1, 8, 8],
                                          **whole(label)) for label in ("failed", "dropped", "kept"))
    claim_request(kept.pk, "worker:1")  # being measured: dropping the job's queued ones leaves it
    folders = {request.pk: folder(media, request) for request in (failed, dropped, kept)}
    assert all(path.is_dir() for path in folders.values())
    fail_request(failed, "gone")
    assert not folders[failed.pk].exists()
    assert requests.drop_queued_requests(job.pk, "the job ended") == 1
    assert not folders[dropped.pk].exists() and folders[kept.pk].is_dir()
    job.delete()
    assert not MeasurementRequest.objects.exists() and not list(media.glob("measurements/*"))


def test_the_sweep_removes_files_no_open_request_names(owner, system_device, sent, media):
    opened, ended = (open_request(owner=owner, device=system_device, reason=label, runtime="onnxruntime",
                                  threads=1, example_shape=[1, 1, 8, 8], **whole(label))
                     for label in ("open", "ended"))
    # A request that ended without its files removed (a crash in between), the files of a request
    # whose transaction rolled back, and files written a moment ago for one not committed yet.
    MeasurementRequest.objects.filter(pk=ended.pk).update(status="done")
    orphan = (media / write_files([b"onnx"], ".onnx")[0]).parent
    young = (media / write_files([b"onnx"], ".onnx")[0]).parent
    hour_ago = time.time() - ORPHAN_SECONDS - 60
    for path in (folder(media, opened), folder(media, ended), orphan):
        os.utime(path, (hour_ago, hour_ago))

    removed = sweep_requests()["files_removed"]
    assert sorted(removed) == sorted([folder(media, ended).name, orphan.name])
    assert folder(media, opened).is_dir() and young.is_dir()
    assert not folder(media, ended).exists() and not orphan.exists()
    assert sweep_requests()["files_removed"] == []
