"""Dataset pages: the built-in datasets everyone shares and each user's image-folder uploads.

An uploaded zip is stored at once as a "checking" dataset (``uploads.create_dataset_upload``)
and the page redirects to the dataset's page, which shows the check's progress (polling
``dataset_status``) and then its verdict: the checking worker extracts and checks the archive and
moves the dataset to ready or rejected (with the reason, and no files left).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.db import transaction
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from adaptation.access import datasets_visible_to, get_dataset_for_user
from adaptation.forms import DatasetUploadForm
from adaptation.models import Dataset
from adaptation.netadapt.data import fashion_mnist_available
from adaptation.uploads import create_dataset_upload
from webapp.lib.uploads import upload_limit_context, upload_limit_error

SPLITS = ("train", "holdout", "validation")


def _remove_files(name: str) -> None:
    """Remove a dataset's extracted folder (or a single stored file)."""
    if not name:
        return
    path = Path(default_storage.path(name))
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        default_storage.delete(name)


def _row(dataset: Dataset) -> dict:
    summary = dataset.summary or {}
    return {"dataset": dataset, "summary": summary, "sizes": summary.get("sizes", {})}


@login_required
def dataset_list(request):
    datasets = list(datasets_visible_to(request.user))
    builtins = [_row(d) for d in datasets if d.is_builtin]
    uploads = [_row(d) for d in datasets if not d.is_builtin]
    fashion_missing = (not any(d.builtin_name == "fashion_mnist" for d in datasets)
                       and not fashion_mnist_available())
    return render(request, "datasets/list.html", {
        "builtins": builtins, "uploads": uploads, "fashion_missing": fashion_missing})


@login_required
def dataset_upload(request):
    form = DatasetUploadForm()
    if request.method == "POST":
        form = DatasetUploadForm(request.POST, request.FILES, upload_error=upload_limit_error(request))
        if form.is_valid():
            dataset = create_dataset_upload(request.user, form)
            messages.info(request, f"{dataset.name} is uploaded; its images are being checked.")
            return redirect("dataset_detail", pk=dataset.pk)
    return render(request, "datasets/upload.html", {"form": form, **upload_limit_context()})


@login_required
def dataset_detail(request, pk):
    dataset = get_dataset_for_user(request.user, pk)
    summary = dataset.summary or {}
    counts = summary.get("class_counts", {})
    classes = [{"name": name, "counts": [counts.get(split, {}).get(name, 0) for split in SPLITS]}
               for name in summary.get("class_names", [])]
    return render(request, "datasets/detail.html", {
        "dataset": dataset, "summary": summary, "splits": SPLITS, "classes": classes,
        "split_sizes": [(split, summary.get("sizes", {}).get(split)) for split in SPLITS]})


@login_required
def dataset_status(request, pk):
    """``{"status", "error"}`` of a dataset the user can see: what its page polls while checking."""
    dataset = get_dataset_for_user(request.user, pk)
    return JsonResponse({"status": dataset.status, "error": dataset.error})


@login_required
@require_POST
def dataset_delete(request, pk):
    dataset = get_dataset_for_user(request.user, pk, write=True)  # built-ins: 404
    used = dataset.jobs.count()
    if used:
        messages.error(request, f"{dataset.name} is used by {used} job(s); delete those first.")
        return redirect("dataset_detail", pk=dataset.pk)
    name = dataset.archive.name
    with transaction.atomic():
        dataset.delete()
        transaction.on_commit(lambda: _remove_files(name))
    messages.success(request, f"Deleted {dataset.name}.")
    return redirect("dataset_list")
