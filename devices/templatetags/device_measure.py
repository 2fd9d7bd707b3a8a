"""Template tags of measurements: ``{% load device_measure %}``.

``{% recent_measurements device %}``: the user's latest measurements on a device, linked to their
pages.
"""
from __future__ import annotations

from django import template

from devices.models import MeasurementRequest

register = template.Library()

#: Measurements the device page lists.
RECENT = 10


@register.inclusion_tag("devices/_measurements.html", takes_context=True)
def recent_measurements(context, device):
    user = context["request"].user
    rows = []
    for measurement in (MeasurementRequest.objects.filter(device=device, owner=user, job_id__isnull=True)
                        .order_by("-created", "-pk")[:RECENT]):
        result = measurement.results[0] if measurement.results else {}
        rows.append({"measurement": measurement, "min_ms": result.get("min_ms"),
                     "median_ms": result.get("median_ms")})
    return {"rows": rows, "device": device}
