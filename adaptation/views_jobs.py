"""Job pages: the list, starting a job, the live detail page, cancelling, files and reports.

Every view takes the job through ``get_job_for_user``: a stranger's job is a 404. Output files
are written by the runner under ``MEDIA_ROOT/jobs/<id>/`` (``adaptation.job_files``) and only
ever leave through ``job_download``; reports are built from the ``Iteration`` rows on request.
The work itself is ``adaptation.job_actions``'s and ``adaptation.downloads``', shared with the REST
API.
"""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from adaptation.access import get_job_for_user
from adaptation.formatting import (PHASE_LABELS, accuracy_text, budget_text, latency_model_text, levers_text,
                                   metric_unit, outcome_text, phase_breakdown, resource_text, schedule_text,
                                   seconds_text)
from adaptation.job_files import FORMAT_LABELS, FORMAT_SUFFIXES
from adaptation.job_forms import JobForm, adapt_config_of, original_resource, schedule_warning
from adaptation.models import Iteration, Job
from adaptation.downloads import (REPORT_FORMATS, ExportFailed, FileUnavailable, download_name, job_file,
                                  open_iteration_file, report_file)
from adaptation.job_actions import cancel_job, create_job, start_child_job


# --------------------------------------------------------------------------- pages


@login_required
def job_list(request):
    jobs = (Job.objects.filter(owner=request.user).select_related("model", "dataset", "device")
            .order_by("-created", "-pk"))
    return render(request, "jobs/list.html", {"jobs": jobs})


@login_required
def job_create(request):
    form = JobForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        job = create_job(request.user, form)
        messages.success(request, f"Job #{job.pk} is queued.")
        return redirect("job_detail", job_id=job.pk)
    return render(request, "jobs/create.html", {"form": form})


def _iteration_table(iterations: list[Iteration], unit: str) -> list[dict]:
    """The proposals table: one block per iteration, its proposals under it."""
    table = []
    for iteration in iterations:
        record = iteration.record or {}
        table.append({
            "number": iteration.number, "chosen_group": record.get("chosen_group", ""),
            "resource": resource_text(iteration.resource, unit),
            "measured": resource_text(iteration.measured_ms, "ms"),
            "holdout": accuracy_text(iteration.holdout_accuracy),
            "validation": accuracy_text(iteration.validation_accuracy),
            "phases": phase_breakdown(record),
            "wall": seconds_text(record["wall_s"]) if record.get("wall_s") else "",
            "proposals": [{"group": p.group, "channels": p.channels, "resource": resource_text(p.resource, unit),
                           "holdout": accuracy_text(p.holdout_accuracy), "chosen": p.chosen}
                          for p in iteration.proposals.all()],
        })
    return table


def _downloads(job: Job, iterations: list[Iteration]) -> dict:
    """The files of each point and of the final model, with whether each exists yet."""
    points = []
    for iteration in iterations:
        if iteration.number < 0:
            continue
        points.append({"number": iteration.number,
                       "available": job_file(job, iteration.number, iteration=iteration).is_file(),
                       "files": [{"label": FORMAT_LABELS[fmt],
                                  "url": reverse("job_download", args=[job.pk, iteration.number, fmt])}
                                 for fmt in FORMAT_SUFFIXES]})
    final = [{"format": fmt, "label": FORMAT_LABELS[fmt], "available": job_file(job, None, fmt).is_file(),
              "url": reverse("job_download_final", args=[job.pk, fmt])}
             for fmt in FORMAT_SUFFIXES]
    return {"points": points, "final": final}


@login_required
def job_detail(request, job_id: int):
    job = get_job_for_user(request.user, job_id)
    iterations = list(job.iterations.prefetch_related("proposals"))
    metric = job.settings.get("metric", "latency")
    config = adapt_config_of(job.settings)
    warnings = []
    warning = schedule_warning(job.settings, original_resource(job.model, metric))
    if warning:
        warnings.append(f"The budget may be unreachable: {warning}.")
    page_data = {"job": job.pk, "ws_url": f"/ws/jobs/{job.pk}/", "metric": metric,
                 "unit": metric_unit(metric), "status": job.status,
                 "active_statuses": list(Job.ACTIVE_STATUSES), "phase_labels": PHASE_LABELS}
    return render(request, "jobs/detail.html", {
        "job": job, "table": _iteration_table(iterations, page_data["unit"]),
        "budget_text": budget_text(job.settings), "schedule_text": schedule_text(config),
        "levers_text": levers_text(config),
        "outcome_text": outcome_text(job.result, job.settings) if job.kind == "adapt" else None,
        "latency_model_text": latency_model_text(job.settings, _whole_since(iterations)),
        "unit": page_data["unit"], "warnings": warnings, "downloads": _downloads(job, iterations),
        "page_data": page_data, "children": job.children.all(),
    })


def _whole_since(iterations) -> int | None:
    """The first iteration whose candidates were measured whole by a table-estimated job."""
    return next((it.number for it in iterations
                 if it.number >= 0 and (it.record or {}).get("latency_estimate") == "whole"), None)


@login_required
@require_POST
def job_cancel(request, job_id: int):
    outcome = cancel_job(get_job_for_user(request.user, job_id))
    notify = messages.info if outcome.done == "inactive" else messages.success
    notify(request, outcome.message)
    return redirect("job_detail", job_id=job_id)


@login_required
@require_POST
def job_finetune(request, job_id: int, number: int):
    """Start a long-term fine-tune of one point of the curve (a child job of kind finetune)."""
    job = get_job_for_user(request.user, job_id)
    iteration = get_object_or_404(Iteration, job=job, number=number, number__gte=0)
    child = start_child_job(job, "finetune", finetune_iteration=iteration.number)
    messages.success(request, f"Job #{child.pk} fine-tunes iteration {iteration.number} of job #{job.pk}.")
    return redirect("job_detail", job_id=child.pk)


@login_required
@require_POST
def job_baseline(request, job_id: int):
    """Start the uniform width-multiplier baseline of an adaptation (a child job of kind baseline)."""
    job = get_job_for_user(request.user, job_id)
    if job.kind != "adapt":
        raise Http404("only adaptations have a baseline")
    child = start_child_job(job, "baseline")
    messages.success(request, f"Job #{child.pk} runs the uniform width-multiplier baseline of job #{job.pk}; "
                              "its points appear on this chart when it is done.")
    return redirect("job_detail", job_id=job.pk)


# --------------------------------------------------------------------------- files and reports


def _missing_file(request, job: Job, what: str):
    return render(request, "jobs/missing_file.html", {"job": job, "what": what}, status=404)


@login_required
def job_download(request, job_id: int, number: int | None = None, fmt: str = "pytorch"):
    """One model file: iteration ``number``'s network in ``fmt`` (ONNX and TorchScript exported
    on demand, as the API does), or (``number`` None) the final model."""
    job = get_job_for_user(request.user, job_id)
    if fmt not in FORMAT_SUFFIXES:
        raise Http404(f"unknown format '{fmt}'")
    if number is None:
        try:
            handle = open(job_file(job, None, fmt), "rb")
        except OSError:
            return _missing_file(request, job, f"The final {FORMAT_LABELS[fmt]} model")
        return FileResponse(handle, as_attachment=True, filename=download_name(job, None, fmt))
    try:
        handle, filename = open_iteration_file(job, number, fmt)
    except FileUnavailable as error:
        return render(request, "jobs/missing_file.html", {"job": job, "message": str(error)}, status=404)
    except ExportFailed as error:
        return render(request, "jobs/missing_file.html", {"job": job, "message": str(error)}, status=500)
    return FileResponse(handle, as_attachment=True, filename=filename)


@login_required
def job_report(request, job_id: int, fmt: str):
    job = get_job_for_user(request.user, job_id)
    if fmt not in REPORT_FORMATS:
        raise Http404(f"unknown report format '{fmt}'")
    text, content_type, filename = report_file(job, fmt)
    return HttpResponse(text, content_type=content_type,
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})
