"""Celery tasks of local devices: each device's measurements run on its own queue, one at a time.

Start the worker of a device with ``celery -A webapp worker -Q device.<id> -c 1`` (``make run``
starts the one of this server's CPU). One process per device keeps measurements from disturbing
each other; the job that asked for them is re-enqueued when they are done (``devices.requests``).
"""
from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from devices.agent.protocol import kept_samples  # pure: the agent keeps samples alike
from devices.host import HostNote, disturbance, host_lock, lock_wait_seconds, measure_retakes
from devices.measure import MeasureProtocol
from devices.measure.local import LocalMeasurer
from devices.models import MeasurementRequest
from devices.requests import (claim_request, complete_request, fail_request, files_missing, network_file_bytes,
                              pending_signatures, store_layer_results)
from webapp.lib.claims import worker_name

logger = logging.getLogger(__name__)

#: Layers timed (and stored) together: a killed worker loses at most one batch.
MEASURE_BATCH = 64
#: Raw per-run times kept per network of a request that no job made (``results[i]["samples_ms"]``).


def measurer_for(request: MeasurementRequest) -> LocalMeasurer:
    protocol = MeasureProtocol(threads=request.threads, **settings.MEASURE_PROTOCOL)
    return LocalMeasurer(request.runtime, protocol)


def run_request(request: MeasurementRequest) -> None:
    """Measure a claimed request on this host's CPU and store everything it asks for.

    The measurement takes the host lock (``devices.host``): fine-tunes on this host pause at their
    next hook. Whole networks timed while disturbed are retaken by the rule stated there; what it
    cost is stored on the request (``host_lock``) and told in its job's log.
    """
    measurer = measurer_for(request)
    version = measurer.runtime_version
    pending = pending_signatures(request, version)
    lock, wait_s, max_spread = host_lock(), lock_wait_seconds(), measurer.protocol.max_spread
    note = HostNote()
    files = network_file_bytes(request)
    with lock.measuring(wait_s) as hold:
        note.add(hold)
        for start in range(0, len(pending), MEASURE_BATCH):
            batch = pending[start:start + MEASURE_BATCH]
            stats = measurer.measure_signatures([signature for _, signature in batch])
            store_layer_results(request, {index: stats[signature] for index, signature in batch}, version)
        results, spreads = _measure_networks(request, measurer, files) if files else ([], [])
    why = disturbance(hold, spreads, max_spread, wait_s)
    note.held = hold.acquired
    best = (not hold.acquired, max(spreads, default=0.0))
    while why and request.networks and note.retaken < measure_retakes():
        note.retaken += 1
        note.why.append(why)
        with lock.measuring(wait_s) as hold:
            note.add(hold)
            attempt, attempt_spreads = _measure_networks(request, measurer, files)
        why = disturbance(hold, attempt_spreads, max_spread, wait_s)
        rank = (not hold.acquired, max(attempt_spreads, default=0.0))
        if rank < best:
            best, results, note.held = rank, attempt, hold.acquired
    if why:  # the retakes ran out (or there were none to take): the best attempt is kept, and said
        note.why.append(why)
        note.kept_disturbed = True
    complete_request(request, results, version, host_lock=note.to_dict(),
                     host_message=note.describe(request.reason) if note.worth_telling() else "")


def _measure_networks(request: MeasurementRequest, measurer: LocalMeasurer,
                      files: list[bytes]) -> tuple[list, list[float]]:
    """The request's network files timed interleaved: their results and their spreads."""
    if request.job_id is None:  # a user's own measurement: its page draws a histogram
        timed = measurer.measure_network_files_with_samples(files, request.example_shape)
        return ([{**t.stats.to_dict(), "samples_ms": kept_samples(t.samples_ms)} for t in timed],
                [t.stats.spread for t in timed])
    stats = measurer.measure_network_files(files, request.example_shape)
    return stats, [s.spread for s in stats]


@shared_task(name="devices.tasks.measure_request", acks_late=True)
def measure_request(request_id: int) -> str | None:
    """Claim and run one measurement request; a failure fails the request, never the worker."""
    request = claim_request(request_id, worker_name())
    if request is None:
        return None
    why = files_missing(request)
    if why:  # stored before requests carried their files: nothing here can measure it
        fail_request(request, why)
        return MeasurementRequest.Status.FAILED
    try:
        run_request(request)
        return MeasurementRequest.Status.DONE
    except Exception as error:  # a bad request must not take the device's worker down
        logger.exception("measurement request %s failed", request_id)
        fail_request(request, f"measuring on {request.device.name} failed: {type(error).__name__}: {error}")
        return MeasurementRequest.Status.FAILED
