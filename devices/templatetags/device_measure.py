"""Template tags of measurements, for pages of other apps: ``{% load device_measure %}``.

``{% measure_form model=upload %}`` / ``{% measure_form job=job %}``: the "Measure on…" form
(``templates/devices/_measure_form.html``), with the devices the signed-in user may measure on.
``{% recent_measurements device %}``: the user's latest measurements on a device, linked to their
pages.
"""
from __future__ import annotations

from django import template
from django.db.models import F

from devices.access import devices_visible_to
from devices.models import MeasurementRequest

register = template.Library()

#: Measurements the device page lists.
RECENT = 10


@register.inclusion_tag("devices/_measure_form.html", takes_context=True)
def measure_form(context, model=None, job=None):
    from devices.measure_model import measurable_iterations

    user = context["request"].user
    devices = devices_visible_to(user).order_by(F("owner_id").asc(nulls_first=True), "name", "pk")
    return {"csrf_token": context.get("csrf_token"), "devices": devices, "model": model, "job": job,
            "iterations": measurable_iterations(job) if job is not None else []}


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
