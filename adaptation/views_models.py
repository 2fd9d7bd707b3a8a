"""Model pages: list, upload (with the pre-flight check), detail, delete.

An upload is kept only when the pre-flight accepts it: a rejected file leaves no row and no file,
and the form comes back with the pre-flight's message.
"""
from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from adaptation.access import get_model_for_user
from adaptation.forms import ModelUploadForm
from adaptation.models import Iteration, Job, ModelUpload
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation.preflight import PreflightError, load_weights, preflight
from webapp.uploads import human_size, upload_limit_error


def check_model_upload(upload: ModelUpload) -> bool:
    """Run the pre-flight on ``upload``'s weights; set its status, report and error; save nothing.

    Ready: ``preflight`` holds the report (groups, MACs, params...). Rejected: ``error`` holds the
    message for the user. It runs in the request for now (seconds for big networks); it only reads
    ``upload.file`` (an upload not yet stored, or a stored file) and sets fields, so a Celery task
    can call it as is on a saved row and save the result.
    """
    spec = ArchitectureSpec(arch=upload.arch, num_classes=upload.num_classes,
                            in_channels=upload.in_channels, width=float(upload.width),
                            resolution=upload.resolution)
    allow_pickled = settings.NETADAPT_ALLOW_PICKLED_MODELS
    try:
        upload.file.open("rb")  # keeps an unsaved upload's temporary file; it is stored later
        model = load_weights(upload.file, spec, allow_pickled_modules=allow_pickled)
        report = preflight(model, spec)
    except PreflightError as error:
        upload.status, upload.error, upload.preflight = "rejected", str(error), {}
        return False
    upload.status, upload.error, upload.preflight = "ready", "", report.to_dict()
    return True


def format_count(number: int | None) -> str:
    """``1.23 M``, ``45.6 k``, ``812``: MACs and parameter counts for people ("" when unknown)."""
    if number is None:
        return ""
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if number >= scale:
            return f"{number / scale:.3g} {unit}"
    return str(number)


def _summary(upload: ModelUpload) -> dict:
    report = upload.preflight or {}
    return {"upload": upload, "macs": format_count(report.get("macs")),
            "params": format_count(report.get("params")), "groups": len(report.get("groups", []))}


def _delete_files(storage, names: list[str]) -> None:
    for name in names:
        if name:
            storage.delete(name)


@login_required
def model_list(request):
    uploads = ModelUpload.objects.filter(owner=request.user)
    return render(request, "models/list.html", {"rows": [_summary(u) for u in uploads]})


@login_required
def model_upload(request):
    limit = human_size(settings.UPLOAD_MAX_BYTES)
    form = ModelUploadForm()
    if request.method == "POST":
        form = ModelUploadForm(request.POST, request.FILES, upload_error=upload_limit_error(request))
        if form.is_valid():
            upload = form.save(commit=False)
            upload.owner = request.user
            if check_model_upload(upload):
                upload.save()  # stores the file too
                messages.success(request, f"{upload.name} passed the pre-flight check.")
                return redirect("model_detail", pk=upload.pk)
            form.add_error("file", f"Rejected: {upload.error}")
    return render(request, "models/upload.html", {
        "form": form, "limit": limit, "max_bytes": settings.UPLOAD_MAX_BYTES})


@login_required
def model_detail(request, pk):
    upload = get_model_for_user(request.user, pk)
    report = upload.preflight or {}
    return render(request, "models/detail.html", {
        **_summary(upload), "report": report, "group_rows": report.get("groups", []),
        "onnx_size": human_size(report["onnx_bytes"]) if report.get("onnx_bytes") else "",
        "job_count": upload.jobs.count()})


@login_required
@require_POST
def model_delete(request, pk):
    upload = get_model_for_user(request.user, pk)
    active = upload.jobs.filter(status__in=Job.ACTIVE_STATUSES).count()
    if active:
        messages.error(request, f"{upload.name} has {active} job(s) still running; cancel them first.")
        return redirect("model_detail", pk=upload.pk)
    # The model's jobs go with it (cascade), and so do their output files.
    outputs = list(Iteration.objects.filter(job__model=upload).exclude(model_file="")
                   .values_list("model_file", flat=True))
    names = [upload.file.name, *outputs]
    with transaction.atomic():
        upload.delete()
        transaction.on_commit(lambda: _delete_files(upload.file.storage, names))
    messages.success(request, f"Deleted {upload.name}.")
    return redirect("model_list")
