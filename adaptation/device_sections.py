"""What adaptation adds to a device's page (``devices.page_sections``): the user's jobs' estimated
against measured whole-network latency on that device, so the look-up table's error is visible;
and how many jobs use the device (``devices.usage``)."""
from __future__ import annotations

from django.http import HttpRequest

from adaptation.models import Iteration, Job
from devices.models import Device

def jobs_on(device: Device, owner=None) -> int:
    """The jobs measured on ``device`` (``owner``'s only, when given): they keep it from deletion."""
    jobs = Job.objects.filter(device=device)
    return (jobs.filter(owner=owner) if owner is not None else jobs).count()


#: Most chart points the device page shows.
MAX_POINTS = 500


def latency_points(user, device: Device) -> list[dict]:
    """Estimated against measured whole-network latency of the user's latency jobs on the device."""
    iterations = (Iteration.objects.filter(job__owner=user, job__device=device, measured_ms__isnull=False)
                  .select_related("job__model").order_by("-created", "-pk")[:MAX_POINTS])
    return [{"job": it.job_id, "model": it.job.model.name, "number": it.number, "measured": it.measured_ms,
             "estimate": it.resource, "raw": it.resource_raw}
            for it in iterations if it.job.settings.get("metric", "latency") == "latency"]


def error_percent(points: list[dict], key: str) -> float | None:
    """Mean absolute percentage error of one estimate against the measurements."""
    pairs = [(p[key], p["measured"]) for p in points if p[key] is not None and p["measured"] > 0]
    return 100 * sum(abs(e - m) / m for e, m in pairs) / len(pairs) if pairs else None


def latency_chart(request: HttpRequest, device: Device) -> tuple[str, dict]:
    """The chart section: its template and context."""
    points = latency_points(request.user, device)
    return "adaptation/device_latency.html", {
        "chart": {"points": points}, "calibrated_error": error_percent(points, "estimate"),
        "raw_error": error_percent(points, "raw")}
