"""Measurement pages: "Measure on…" (the form on the model and job pages posts here) and one
measurement's page: its status while it waits or runs (the page reloads itself), then the
statistics of the whole network, a histogram of its runs and the look-up table's per-layer view.
A queued measurement of the user's own (not a job's) can be cancelled from its page.

Only the owner sees a measurement; another user's is a 404, like their models, jobs and devices.
The work is ``adaptation.measure_model``'s, shared with the REST API.
"""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from adaptation.access import get_job_for_user, get_model_for_user
from adaptation import measure_model
from adaptation.measure_model import MeasureError
from devices.models import MeasurementRequest

#: Seconds between reloads of the page of a measurement still queued or running.
REFRESH_SECONDS = 3
STATS_ROWS = (("min_ms", "Min"), ("p10_ms", "p10"), ("median_ms", "Median"), ("p90_ms", "p90"),
              ("mean_ms", "Mean"), ("std_ms", "Std"))


def _owned_id(value) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise Http404("no such object") from None


@login_required
@require_POST
def measurement_start(request):
    """Open a measurement of a model (``model``) or of a job's point (``job`` + ``iteration``, the
    final network when left out) on ``device``; back to the page it came from with the reason when
    it cannot start (nothing is stored then)."""
    post, user = request.POST, request.user
    job = upload = None
    if post.get("job"):
        job = get_job_for_user(user, _owned_id(post["job"]))
        back = reverse("job_detail", args=[job.pk])
    elif post.get("model"):
        upload = get_model_for_user(user, _owned_id(post["model"]))
        back = reverse("model_detail", args=[upload.pk])
    else:
        raise Http404("nothing to measure: give a model or a job")
    try:
        device = measure_model.visible_device(user, post.get("device"))
        if job is not None:
            target = measure_model.job_target(user, job.pk, post.get("iteration"))
        else:
            target = measure_model.model_target(user, upload.pk)
        measurement = measure_model.start_measurement(user, device, target)
    except MeasureError as error:
        messages.error(request, str(error))
        return redirect(back)
    messages.success(request, f"Measuring {target.label} on {device.name}.")
    return redirect("measurement_detail", pk=measurement.pk)


def _network_rows(measurement: MeasurementRequest) -> list[dict]:
    rows = []
    for index, description in enumerate(measurement.networks):
        result = measurement.results[index] if index < len(measurement.results) else None
        rows.append({"label": description.get("label", f"network {index}"),
                     "stats": [(label, result.get(key)) for key, label in STATS_ROWS] if result else [],
                     "n": result.get("n") if result else None,
                     "samples": len(result.get("samples_ms") or []) if result else 0})
    return rows


@login_required
@require_POST
def measurement_cancel(request, pk: int):
    """Cancel a queued measurement; back to its page, which says what happened."""
    measurement = get_object_or_404(MeasurementRequest, pk=pk, owner=request.user)
    try:
        measure_model.cancel_measurement(measurement)
    except MeasureError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"Cancelled measurement #{measurement.pk}.")
    return redirect("measurement_detail", pk=measurement.pk)


@login_required
@require_GET
def measurement_detail(request, pk: int):
    measurement = get_object_or_404(MeasurementRequest.objects.select_related("device"), pk=pk,
                                    owner=request.user)
    context = {"measurement": measurement, "device": measurement.device, "refresh": REFRESH_SECONDS,
               "networks": _network_rows(measurement), "layers_total": len(measurement.signatures)}
    single = measurement.job_id is None and len(measurement.networks) == 1
    if measurement.status == MeasurementRequest.Status.DONE and single and measurement.results:
        result = measurement.results[0]
        samples = result.get("samples_ms") or []
        if samples:
            context["chart"] = {**measure_model.histogram(samples), "n": len(samples)}
        try:
            breakdown = measure_model.layer_breakdown(measurement)
        except MeasureError as error:
            context["breakdown_error"] = str(error)
        else:
            context["breakdown"] = breakdown
            measured = result.get("min_ms")
            if breakdown.raw_ms is not None and measured:
                context["measured_min"] = measured
                context["raw_vs_measured"] = 100 * (breakdown.raw_ms - measured) / measured
        context["calibration_points"] = measure_model.calibration_points(request.user, measurement.device)
    return render(request, "devices/measurement.html", context)
