"""Model pages: list, upload (a built-in architecture's weights or an ONNX file), detail, delete,
and the small JSON status the detail page polls while the upload is checked.

An upload is stored at once as "checking" (``uploads.create_model_upload``) and the page
redirects to the model's page, which shows the check's progress and then its verdict: the
checking worker runs the pre-flight and moves the model to ready or rejected (with the reason;
a rejected upload's file is deleted).
"""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from adaptation.access import get_model_for_user
from adaptation.forms import ModelUploadForm
from adaptation.models import Iteration, Job, ModelUpload
from adaptation.uploads import create_model_upload
from webapp.lib.formatting import format_count, human_size
from webapp.lib.uploads import upload_limit_context, upload_limit_error


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
    form = ModelUploadForm()
    if request.method == "POST":
        form = ModelUploadForm(request.POST, request.FILES, upload_error=upload_limit_error(request))
        if form.is_valid():
            upload = create_model_upload(request.user, form)
            messages.info(request, f"{upload.name} is uploaded; its pre-flight check runs now.")
            return redirect("model_detail", pk=upload.pk)
    return render(request, "models/upload.html", {"form": form, **upload_limit_context()})


def _group_rows(report: dict) -> list[dict]:
    """The report's groups, each layer of an ONNX upload followed by the file's name for it.

    An ONNX network's layers carry generated names (``n3``: the file's names never reach code);
    ``onnx_names`` says which node of the file each is. Plain text: the template escapes it.
    """
    names = report.get("onnx_names") or {}

    def label(layer: str) -> str:
        return f"{layer} ({names[layer]})" if layer in names else layer

    return [{**group, "onnx_name": names.get(group.get("name"), ""),
             "out_layers": [label(layer) for layer in group.get("out_layers", [])],
             "in_layers": [label(layer) for layer in group.get("in_layers", [])]}
            for group in report.get("groups", [])]


@login_required
def model_detail(request, pk):
    upload = get_model_for_user(request.user, pk)
    report = upload.preflight or {}
    return render(request, "models/detail.html", {
        **_summary(upload), "report": report, "group_rows": _group_rows(report),
        "onnx_names": bool(report.get("onnx_names")),
        "onnx_size": human_size(report["onnx_bytes"]) if report.get("onnx_bytes") else "",
        "job_count": upload.jobs.count()})


@login_required
def model_status(request, pk):
    """``{"status", "error"}`` of one of the user's models: what its page polls while checking."""
    upload = get_model_for_user(request.user, pk)
    return JsonResponse({"status": upload.status, "error": upload.error})


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
    names = [upload.file.name, *outputs]  # a check still running deletes the file itself
    with transaction.atomic():
        upload.delete()
        transaction.on_commit(lambda: _delete_files(upload.file.storage, names))
    messages.success(request, f"Deleted {upload.name}.")
    return redirect("model_list")
