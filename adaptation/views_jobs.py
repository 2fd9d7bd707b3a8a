"""Job pages: the list, starting a job, the live detail page, cancelling, files and reports.

Every view takes the job through ``get_job_for_user``: a stranger's job is a 404. Output files
are written by the runner under ``MEDIA_ROOT/jobs/<id>/`` and only ever leave through
``job_download``; reports are built from the ``Iteration`` rows on request.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from adaptation.access import get_job_for_user
from adaptation.job_forms import METRIC_UNITS, JobForm, original_resource, schedule_warning
from adaptation.models import Iteration, Job
from webapp.events import publish

#: Final model files: format -> (file name in the job's folder, download suffix).
FINAL_FILES = {"onnx": ("final.onnx", ".onnx"), "torchscript": ("final.torchscript.pt", ".torchscript.pt"),
               "pytorch": ("final.pt", ".pt")}
FORMAT_LABELS = {"onnx": "ONNX", "torchscript": "TorchScript", "pytorch": "PyTorch"}
REPORT_COLUMNS = ("iteration", "chosen_group", "target", "resource", "resource_raw", "measured_ms",
                  "measured_min_ms", "measured_median_ms", "macs", "params", "holdout_accuracy",
                  "validation_accuracy", "proposals")


# --------------------------------------------------------------------------- files


def job_folder(job: Job) -> Path:
    return Path(settings.MEDIA_ROOT) / "jobs" / str(job.pk)


def iteration_path(job: Job, iteration: Iteration | None, number: int) -> Path:
    """Where iteration ``number``'s PyTorch file is: its row's file if recorded, else the job folder."""
    if iteration is not None and iteration.model_file:
        try:
            return Path(iteration.model_file.path)
        except (NotImplementedError, ValueError):
            pass
    return job_folder(job) / f"iteration_{number:03d}.pt"


def _missing_file(request, job: Job, what: str):
    return render(request, "jobs/missing_file.html", {"job": job, "what": what}, status=404)


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
        job = Job.objects.create(owner=request.user, kind="adapt", model=form.cleaned_data["model"],
                                 dataset=form.cleaned_data["dataset"], device=form.cleaned_data["device"],
                                 settings=form.job_settings())
        from adaptation.tasks import enqueue_job

        enqueue_job(job)
        messages.success(request, f"Job #{job.pk} is queued.")
        return redirect("job_detail", job_id=job.pk)
    return render(request, "jobs/create.html", {"form": form})


def _budget_text(job_settings: dict) -> str:
    metric = job_settings.get("metric", "latency")
    budget = job_settings.get("budget")
    if budget is None:
        return "—"
    if job_settings.get("budget_relative", True):
        return f"{budget * 100:g}% of the original {metric}"
    return f"{budget:g} {METRIC_UNITS.get(metric, metric)}"


def _resource_text(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value:.3f} {unit}" if unit == "ms" else f"{value:,.0f} {unit}"


def _accuracy_text(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _iteration_table(iterations: list[Iteration], unit: str) -> list[dict]:
    """The proposals table: one block per iteration, its proposals under it."""
    table = []
    for iteration in iterations:
        record = iteration.record or {}
        table.append({
            "number": iteration.number, "chosen_group": record.get("chosen_group", ""),
            "resource": _resource_text(iteration.resource, unit),
            "measured": _resource_text(iteration.measured_ms, "ms"),
            "holdout": _accuracy_text(iteration.holdout_accuracy),
            "validation": _accuracy_text(iteration.validation_accuracy),
            "proposals": [{"group": p.group, "channels": p.channels, "resource": _resource_text(p.resource, unit),
                           "holdout": _accuracy_text(p.holdout_accuracy), "chosen": p.chosen}
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
                       "available": iteration_path(job, iteration, iteration.number).is_file(),
                       "url": reverse("job_download", args=[job.pk, iteration.number, "pytorch"])})
    final = [{"format": fmt, "label": FORMAT_LABELS[fmt],
              "available": (job_folder(job) / name).is_file(),
              "url": reverse("job_download_final", args=[job.pk, fmt])}
             for fmt, (name, _) in FINAL_FILES.items()]
    return {"points": points, "final": final}


@login_required
def job_detail(request, job_id: int):
    job = get_job_for_user(request.user, job_id)
    iterations = list(job.iterations.prefetch_related("proposals"))
    metric = job.settings.get("metric", "latency")
    warnings = []
    warning = schedule_warning(job.settings, original_resource(job.model, metric))
    if warning:
        warnings.append(f"The budget may be unreachable: {warning}.")
    page_data = {"job": job.pk, "ws_url": f"/ws/jobs/{job.pk}/", "metric": metric,
                 "unit": METRIC_UNITS.get(metric, metric), "status": job.status,
                 "active_statuses": list(Job.ACTIVE_STATUSES)}
    return render(request, "jobs/detail.html", {
        "job": job, "table": _iteration_table(iterations, page_data["unit"]),
        "budget_text": _budget_text(job.settings),
        "unit": page_data["unit"], "warnings": warnings, "downloads": _downloads(job, iterations),
        "page_data": page_data, "children": job.children.all(),
        "finetune_enabled": getattr(settings, "FINETUNE_JOBS_ENABLED", False),
    })


@login_required
@require_POST
def job_cancel(request, job_id: int):
    job = get_job_for_user(request.user, job_id)
    if not job.is_active:
        messages.info(request, f"Job #{job.pk} is already {job.get_status_display().lower()}.")
        return redirect("job_detail", job_id=job.pk)
    # No worker holds a queued or waiting job (a claim moves it to running with a conditional
    # UPDATE, which this one races fairly): it stops here. A running job stops at its next check.
    cancelled = Job.objects.filter(pk=job.pk, status__in=("queued", "waiting")).update(
        status="cancelled", cancel_requested=True, finished_at=timezone.now())
    if cancelled:
        publish(job.pk, "job.status", {"status": "cancelled", "error": ""})
        messages.success(request, f"Job #{job.pk} is cancelled.")
        return redirect("job_detail", job_id=job.pk)
    Job.objects.filter(pk=job.pk, status="running").update(cancel_requested=True)
    publish(job.pk, "job.log", {"level": "warning",
                                "message": "Cancel requested: the job stops after its current step."})
    messages.success(request, f"Cancel requested: job #{job.pk} stops after its current step.")
    return redirect("job_detail", job_id=job.pk)


@login_required
@require_POST
def job_finetune(request, job_id: int, number: int):
    """Start a long-term fine-tune of one point of the curve (a child job of kind finetune)."""
    job = get_job_for_user(request.user, job_id)
    if not getattr(settings, "FINETUNE_JOBS_ENABLED", False):
        raise Http404("fine-tuning a point is not enabled")
    iteration = get_object_or_404(Iteration, job=job, number=number)
    child = Job.objects.create(owner=request.user, kind="finetune", parent=job, model=job.model,
                               dataset=job.dataset, device=job.device, status="queued",
                               settings={**job.settings, "finetune_iteration": iteration.number})
    note = (f"Long-term fine-tune of iteration {iteration.number} of job #{job.pk}. Fine-tune jobs "
            "have no runner yet: this job stays queued until one exists.")
    publish(child.pk, "job.log", {"level": "warning", "message": note})
    messages.info(request, note)
    return redirect("job_detail", job_id=child.pk)


# --------------------------------------------------------------------------- files and reports


@login_required
def job_download(request, job_id: int, number: int | None = None, fmt: str = "pytorch"):
    """One model file: iteration ``number``'s PyTorch file, or (``number`` None) the final model."""
    job = get_job_for_user(request.user, job_id)
    if number is None:
        if fmt not in FINAL_FILES:
            raise Http404(f"unknown format '{fmt}'")
        name, suffix = FINAL_FILES[fmt]
        path, download_name = job_folder(job) / name, f"job{job.pk}-final{suffix}"
        what = f"The final {FORMAT_LABELS[fmt]} model"
    else:
        if fmt != "pytorch":
            raise Http404("iterations are kept as PyTorch files only")
        iteration = job.iterations.filter(number=number).first()
        path = iteration_path(job, iteration, number)
        download_name = f"job{job.pk}-iteration{number:03d}.pt"
        what = f"The PyTorch file of iteration {number}"
    try:
        handle = open(path, "rb")
    except OSError:
        return _missing_file(request, job, what)
    return FileResponse(handle, as_attachment=True, filename=download_name)


def report_rows(job: Job) -> list[dict]:
    """One flat row per recorded iteration (the original network as iteration -1)."""
    rows = []
    for iteration in job.iterations.prefetch_related("proposals"):
        record = iteration.record or {}
        measured = record.get("measured") or {}
        proposals = list(iteration.proposals.all())
        rows.append({
            "iteration": iteration.number, "chosen_group": record.get("chosen_group", ""),
            "target": record.get("target", ""), "resource": iteration.resource,
            "resource_raw": iteration.resource_raw, "measured_ms": iteration.measured_ms,
            "measured_min_ms": measured.get("min_ms", ""), "measured_median_ms": measured.get("median_ms", ""),
            "macs": iteration.macs, "params": iteration.params,
            "holdout_accuracy": iteration.holdout_accuracy,
            "validation_accuracy": iteration.validation_accuracy,
            "proposals": len(proposals) or len(record.get("proposals") or []),
            "_channels": record.get("channels", {}),
            "_proposals": [{"group": p.group, "channels": p.channels, "resource": p.resource,
                            "holdout_accuracy": p.holdout_accuracy, "chosen": p.chosen} for p in proposals],
        })
    return rows


@login_required
def job_report(request, job_id: int, fmt: str):
    job = get_job_for_user(request.user, job_id)
    rows = report_rows(job)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    elif fmt == "json":
        report = {
            "job": {"id": job.pk, "kind": job.kind, "status": job.status, "error": job.error,
                    "model": job.model.name, "dataset": job.dataset.name, "device": job.device.name,
                    "created": job.created.isoformat(),
                    "finished": job.finished_at.isoformat() if job.finished_at else None},
            "settings": job.settings, "result": job.result,
            "iterations": [{**{k: row[k] for k in REPORT_COLUMNS if k != "proposals"},
                            "channels": row["_channels"], "proposals": row["_proposals"]} for row in rows],
        }
        response = HttpResponse(json.dumps(report, indent=1, default=str), content_type="application/json")
    else:
        raise Http404(f"unknown report format '{fmt}'")
    response["Content-Disposition"] = f'attachment; filename="job{job.pk}-report.{fmt}"'
    return response
