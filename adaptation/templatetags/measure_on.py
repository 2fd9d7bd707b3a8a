"""The "Measure on…" form of the model and job pages: ``{% load measure_on %}``, then
``{% measure_form model=upload %}`` / ``{% measure_form job=job %}``
(``templates/devices/_measure_form.html``), with the devices the signed-in user may measure on."""
from __future__ import annotations

from django import template
from django.db.models import F

from adaptation.measure_model import measurable_iterations
from devices.access import devices_visible_to

register = template.Library()


@register.inclusion_tag("devices/_measure_form.html", takes_context=True)
def measure_form(context, model=None, job=None):
    user = context["request"].user
    devices = devices_visible_to(user).order_by(F("owner_id").asc(nulls_first=True), "name", "pk")
    return {"csrf_token": context.get("csrf_token"), "devices": devices, "model": model, "job": job,
            "iterations": measurable_iterations(job) if job is not None else []}
