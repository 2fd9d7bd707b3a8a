"""Measurement requests: queued per device, served one at a time, results into the look-up table.

The life of a request (``MeasurementRequest``):
- ``open_request`` stores what a job (or a user) wants timed, with the file of each whole network
  the asker exported (``devices.request_files``), and, once the transaction commits, hands it to
  the device: a ``local`` device's Celery queue ``device.<id>``; an ``agent`` device picks it up
  over its websocket (``devices.consumers``). Asking twice for the same thing in one job returns
  the request already there (and exports nothing).
- ``claim_request`` moves it to ``running`` for one measurer; an agent that reconnects after a
  crash claims its own running request again.
- ``store_layer_results`` adds timed layers to the device's table as they come (a measurer killed
  half-way loses nothing: ``pending_signatures`` lists only what is still missing);
  ``complete_request`` stores the networks' statistics and ends it; ``fail_request`` ends it with
  an error. Either way it sends ``devices.signals.request_ended``: adaptation publishes the job's
  events and, when it was the job's last open request, re-enqueues the waiting job. Its networks'
  files go once it has ended.
"""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Callable, Iterable, Mapping, Sequence

from celery import signature
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from devices.lut import DatabaseLatencyTable, remote_backend, remote_version
from devices.measure.signature import LayerSignature
from devices.measure.stats import TimingStats
from devices.models import Device, MeasurementRequest
from devices.request_files import folder_names, read_file, remove_files, sweep_files, write_files
from devices.signals import request_ended
from webapp.lib.claims import claim_is_gone, requeue_seconds

#: The task that measures a request on a local device's queue (``devices.tasks``, sent by name).
MEASURE_REQUEST = "devices.tasks.measure_request"

logger = logging.getLogger(__name__)


def device_queue(device: Device | int) -> str:
    """The Celery queue of a local device's measurements."""
    return f"device.{getattr(device, 'pk', device)}"


def request_key(signatures: list[dict], networks: list[dict], example_shape: list[int]) -> str:
    """What a request asks for, as a hash: the same question in one job is asked once."""
    text = json.dumps({"signatures": signatures, "networks": networks, "shape": example_shape},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


NetworkFiles = Sequence[bytes] | Callable[[], Sequence[bytes]]


def open_request(*, owner, device: Device, job_id: int | None = None, reason: str, runtime: str, threads: int,
                 example_shape: list[int], signatures: list[dict] | None = None,
                 networks: list[dict] | None = None, network_files: NetworkFiles | None = None) -> MeasurementRequest:
    """The job's open request for exactly this, or a new one.

    ``job_id``: the job that asks (None: a user's own measurement). ``networks``: a description
    of each whole network (its ``label`` names it; the key of the request is made of them);
    ``network_files``: each one's file for ``runtime`` (``devices.measure.builders.network_file``),
    or a function that exports them, called only when a new request is stored. A new request is
    dispatched to its device when the current transaction commits.
    """
    signatures, networks = list(signatures or []), list(networks or [])
    key = request_key(signatures, networks, list(example_shape))
    if job_id is not None:
        existing = (MeasurementRequest.objects.filter(job_id=job_id, key=key, status__in=MeasurementRequest.OPEN_STATUSES)
                    .order_by("-pk").first())
        if existing is not None:
            return existing
    names = _store_network_files(networks, network_files, runtime)
    try:
        request = MeasurementRequest.objects.create(
            owner=owner, device=device, job_id=job_id, reason=reason[:200], key=key, runtime=runtime,
            threads=threads, example_shape=list(example_shape), signatures=signatures, networks=networks,
            network_files=names)
    except BaseException:
        remove_files(names)
        raise
    request_id, device_id, kind = request.pk, device.pk, device.kind
    transaction.on_commit(lambda: dispatch(request_id, device_id, kind))
    return request


def _store_network_files(networks: list[dict], files: NetworkFiles | None, runtime: str) -> list[str]:
    """Write the networks' files; their storage names."""
    if not networks:
        return []
    if files is None:
        raise ValueError("a request for whole networks needs their files: devices times files "
                         "(devices.measure.builders.network_file), it does not build networks")
    files = list(files() if callable(files) else files)
    if len(files) != len(networks):
        raise ValueError(f"{len(networks)} network(s) but {len(files)} file(s)")
    # builders loads torch: only a request for whole networks gets here
    from devices.measure.builders import network_suffix
    return write_files(files, network_suffix(runtime))


def stored_without_files(request: MeasurementRequest) -> bool:
    """Whether the request asks for whole networks but was stored before requests carried their
    files (``devices.request_files``): it cannot be measured, and whoever waits on it asks again."""
    return bool(request.networks) and len(request.network_files) != len(request.networks)


def files_missing(request: MeasurementRequest) -> str | None:
    """Why the request cannot be measured for lack of its networks' files, or None when it has them."""
    if not stored_without_files(request):
        return None
    then = ("its job asks again when it resumes" if request.job_id is not None
            else "measure the model again to time it")
    return (f"measurement request {request.pk} was stored by an earlier version of the server, before "
            f"requests carried their networks' files, and cannot be measured: {then}")


def network_file_bytes(request: MeasurementRequest) -> list[bytes]:
    """The bytes of the request's network files, in the order of ``request.networks``."""
    why = files_missing(request)
    if why:
        raise ValueError(why)
    return [read_file(name) for name in request.network_files]


def remove_request_files(request: MeasurementRequest) -> None:
    """Remove an ended (or deleted) request's files once the current transaction commits."""
    names = list(request.network_files or [])
    if names:
        transaction.on_commit(lambda: remove_files(names))


def request_deleted(sender, instance: MeasurementRequest, **kwargs) -> None:
    """``post_delete`` of a request (alone, or with its job, device or owner): its files go too."""
    remove_request_files(instance)


def dispatch(request_id: int, device_id: int, kind: str) -> None:
    """Hand a request to its device: a task on a local device's queue; agents pull theirs."""
    if kind == "local":  # by its pinned name: devices.tasks imports this module
        signature(MEASURE_REQUEST, args=(request_id,)).apply_async(queue=device_queue(device_id))


def claim_request(request_id: int, worker: str) -> MeasurementRequest | None:
    """Take a queued request (or one this worker already runs); None when it is not ours."""
    now = timezone.now()
    with transaction.atomic():
        claimed = (MeasurementRequest.objects.filter(pk=request_id, status=MeasurementRequest.Status.QUEUED)
                   .update(status=MeasurementRequest.Status.RUNNING, claimed_by=worker, started_at=now))
        if not claimed:
            claimed = MeasurementRequest.objects.filter(pk=request_id, status=MeasurementRequest.Status.RUNNING,
                                                        claimed_by=worker).exists()
        if not claimed:
            return None
        MeasurementRequest.objects.filter(pk=request_id).update(attempts=F("attempts") + 1)
    return MeasurementRequest.objects.select_related("device").get(pk=request_id)


def device_table(device: Device) -> DatabaseLatencyTable:
    """The look-up table a job on ``device`` reads: its runtime at the version that measures.

    A local device measures with this server's runtime; an agent with the ONNX Runtime version it
    reported (none yet: an empty table, filled once it has measured).
    """
    if device.kind == "local":
        from devices.measure.runtimes import get_runtime  # imports torch: only where it is needed
        version = get_runtime(device.runtime).version()
    elif device.kind == "phone":  # the browser's runtime, at the version and backend it reported
        return DatabaseLatencyTable(device, device.runtime, remote_version(device), device.threads,
                                    remote_backend(device))
    elif device.runtime != "onnxruntime":
        raise ValueError(f"device '{device.name}' is set to {device.get_runtime_display()}, but the "
                         "agent program measures with ONNX Runtime only: change its runtime")
    else:
        version = remote_version(device)
    return DatabaseLatencyTable(device, device.runtime, version, device.threads)


def request_table(request: MeasurementRequest, runtime_version: str) -> DatabaseLatencyTable:
    """The look-up table a request's layers go into (a phone's: of the backend it reported)."""
    return DatabaseLatencyTable(request.device, request.runtime, runtime_version, request.threads,
                                remote_backend(request.device))


def request_signatures(request: MeasurementRequest) -> list[LayerSignature]:
    return [LayerSignature.from_dict(d) for d in request.signatures]


def pending_signatures(request: MeasurementRequest, runtime_version: str) -> list[tuple[int, LayerSignature]]:
    """(index, signature) of the request's layers the device's table does not hold yet."""
    signatures = request_signatures(request)
    held = request_table(request, runtime_version).lookup(signatures)
    return [(i, s) for i, s in enumerate(signatures) if s not in held]


def store_layer_results(request: MeasurementRequest, results: Mapping[int, Mapping | TimingStats],
                        runtime_version: str, overheads: Mapping[int, float] | None = None) -> int:
    """Add timed layers (by index into ``request.signatures``) to the table, with the per-call
    probe of those that have one (``overheads``, by the same index: phones); returns how many."""
    signatures = request_signatures(request)
    overheads = {int(index): float(ms) for index, ms in (overheads or {}).items()}
    entries, probes = {}, {}
    for index, stats in results.items():
        index = int(index)
        if not 0 <= index < len(signatures):
            raise ValueError(f"layer index {index} is not in request {request.pk}")
        entries[signatures[index]] = stats if isinstance(stats, TimingStats) else TimingStats(**stats)
        if index in overheads:
            probes[signatures[index]] = overheads[index]
    if entries:
        request_table(request, runtime_version).add(entries, probes)
    done = len(signatures) - len(pending_signatures(request, runtime_version))
    MeasurementRequest.objects.filter(pk=request.pk).update(signatures_done=done,
                                                            runtime_version=runtime_version)
    return len(entries)


def complete_request(request: MeasurementRequest, network_results: Iterable[Mapping | TimingStats],
                     runtime_version: str, *, host_lock: dict | None = None, host_message: str = "") -> None:
    """End a request with its networks' statistics (in the order of ``request.networks``).

    ``host_lock``: what taking this host cost a local measurement (``devices.host.HostNote``);
    ``host_message``: the line its job's log says about it, if any."""
    results = [r.to_dict() if isinstance(r, TimingStats) else dict(r) for r in network_results]
    if len(results) != len(request.networks):
        raise ValueError(f"request {request.pk} asked for {len(request.networks)} network(s), "
                         f"got {len(results)} result(s)")
    missing = pending_signatures(request, runtime_version)
    if missing:
        raise ValueError(f"request {request.pk}: {len(missing)} layer(s) were not measured")
    with transaction.atomic():
        ended = MeasurementRequest.objects.filter(pk=request.pk, status__in=MeasurementRequest.OPEN_STATUSES).update(
            status=MeasurementRequest.Status.DONE, results=results, runtime_version=runtime_version, error="",
            signatures_done=len(request.signatures), finished_at=timezone.now(), host_lock=host_lock or {})
        if ended:
            remove_request_files(request)
            request_ended.send(MeasurementRequest, request=request, status=MeasurementRequest.Status.DONE, host_message=host_message,
                               table_size=len(request_table(request, runtime_version)))


def fail_request(request: MeasurementRequest, error: str) -> None:
    """End a request with an error the job shows to its user."""
    with transaction.atomic():
        ended = MeasurementRequest.objects.filter(pk=request.pk, status__in=MeasurementRequest.OPEN_STATUSES).update(
            status=MeasurementRequest.Status.FAILED, error=error[:2000], finished_at=timezone.now())
        if ended:
            remove_request_files(request)
            request_ended.send(MeasurementRequest, request=request, status=MeasurementRequest.Status.FAILED, host_message="",
                               table_size=None)


def drop_queued_requests(job_id: int, why: str) -> int:
    """Fail the job's requests no device has started (it ended): devices skip them. Requests being
    measured finish; their layers still fill the device's table."""
    with transaction.atomic():
        queued = MeasurementRequest.objects.select_for_update().filter(
            job_id=job_id, status=MeasurementRequest.Status.QUEUED)
        rows = list(queued.values_list("pk", "network_files"))
        count = MeasurementRequest.objects.filter(pk__in=[pk for pk, _ in rows]).update(
            status=MeasurementRequest.Status.FAILED, error=why, finished_at=timezone.now())
        names = [name for _, files in rows for name in files or []]
        if names:
            transaction.on_commit(lambda: remove_files(names))
    return count


def device_wait_seconds() -> float:
    """How long a job waits for an agent device to measure before it fails."""
    return float(settings.DEVICE_WAIT_SECONDS)


def sweep_requests(now=None) -> dict[str, list[int]]:
    """Requests that need a push: a local device's requests whose worker died (running under a
    process of this host that is gone) or that sat queued past ``JOB_REQUEUE_SECONDS`` (the
    filesystem transport loses a message its killed worker had read) are dispatched again; an
    agent device's requests open past ``DEVICE_WAIT_SECONDS`` fail, and their jobs with them.
    Network files that no open request names are removed (``devices.request_files.sweep_files``).
    """
    now = now or timezone.now()
    local = MeasurementRequest.objects.filter(device__kind="local")
    resent = []
    for request in local.filter(status=MeasurementRequest.Status.RUNNING).only("pk", "claimed_by", "device"):
        if claim_is_gone(request.claimed_by) and local.filter(
                pk=request.pk, status=MeasurementRequest.Status.RUNNING, claimed_by=request.claimed_by
        ).update(status=MeasurementRequest.Status.QUEUED, claimed_by=""):
            resent.append(request.pk)
    stale = local.filter(status=MeasurementRequest.Status.QUEUED, created__lt=now - timedelta(seconds=requeue_seconds()))
    resent += [pk for pk in stale.values_list("pk", flat=True) if pk not in resent]
    for request in MeasurementRequest.objects.filter(pk__in=resent).select_related("device"):
        dispatch(request.pk, request.device_id, "local")
    expired = []
    limit = device_wait_seconds()
    for request in (MeasurementRequest.objects.filter(device__kind__in=Device.REMOTE_KINDS, status__in=MeasurementRequest.OPEN_STATUSES,
                                                      created__lt=now - timedelta(seconds=limit))
                    .select_related("device")):
        fail_request(request, f"{request.device.name} did not measure within {limit / 3600:g} h "
                              f"({describe_presence(request.device)}); the job gave up waiting")
        expired.append(request.pk)
    open_files = MeasurementRequest.objects.filter(status__in=MeasurementRequest.OPEN_STATUSES).values_list(
        "network_files", flat=True)
    removed = sweep_files(folder_names(name for names in open_files for name in names or []),
                          now=now.timestamp())
    return {"resent": sorted(resent), "expired": expired, "files_removed": removed}


def describe_presence(device: Device) -> str:
    """"online", or how long an agent has been away, for messages."""
    if device.status != Device.Status.OFFLINE:
        return device.get_status_display().lower()
    if device.last_seen is None:
        return "it never connected"
    return f"offline, last seen {device.last_seen:%Y-%m-%d %H:%M} UTC"
