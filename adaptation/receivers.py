"""What adaptation does when devices signals that a measurement request ended.

The request's job (if it has one) gets its events (``job.log`` for the host note, ``job.measure``
for a measured request) and, once none of its requests is open, is re-enqueued. Connected in
``AdaptationConfig.ready``.
"""
from __future__ import annotations

from adaptation.events import publish
from adaptation.enqueue import resume_job
from devices.models import MeasurementRequest


def resume_waiting_job(job_id: int) -> bool:
    """Re-enqueue a job that waits for measurements once none of its requests is open."""
    if MeasurementRequest.objects.filter(job_id=job_id, status__in=MeasurementRequest.OPEN_STATUSES).exists():
        return False
    return resume_job(job_id, "measurement")


def request_ended(sender, *, request: MeasurementRequest, status: str, table_size: int | None = None,
                  host_message: str = "", **kwargs) -> None:
    """``devices.signals.request_ended``: the job's events, then wake the job."""
    if request.job_id is None:
        return
    if host_message:
        publish(request.job_id, "job.log", {"level": "info", "message": host_message})
    if status == MeasurementRequest.Status.DONE:
        publish(request.job_id, "job.measure", {
            "reason": request.reason, "signatures": len(request.signatures),
            "networks": len(request.networks), "request": request.pk,
            "device": request.device.name, "done": True, "table_size": table_size})
    resume_waiting_job(request.job_id)
