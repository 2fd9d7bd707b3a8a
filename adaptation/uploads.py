"""Uploads of models and dataset archives: stored at once, checked by the checking worker.

An upload is stored at once with status "checking" and its check is sent to the checking worker
(``tasks.check_model_upload`` / ``check_dataset_upload``, queue ``checking``) once the row is
committed. The worker runs the check in a child process under the ceilings of the settings
(``adaptation.checking``) and moves the row to "ready" or "rejected" with the reason; nothing of
a rejected upload stays on disk. No upload is parsed in the web process.

- ``create_model_upload(user, form)``, ``create_dataset_upload(user, form)``
  (``store_dataset_upload``): store an upload as "checking" and send its check to the checking
  worker, whose tasks call ``finish_model_check`` / ``finish_dataset_check`` (``check_model_upload``:
  the pre-flight of a model's stored file in a bounded child, recorded on the row).

The pages and the REST API both call these, so both answer the same input the same way.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction

from adaptation import enqueue
from adaptation.archives import ArchiveError, ArchiveLimits
from adaptation.checking.datasets import DatasetCheckLimits, check_dataset_archive, limits_from_settings
from adaptation.checking.limits import run_limited
from adaptation.checking.models import Runner, check_model_file
from adaptation.job_files import uploaded_dataset_name
from adaptation.models import Dataset, ModelUpload


#: What an uploaded archive may expand to; None: the settings' pixel limits and ArchiveLimits'
#: byte and member limits (tests replace it to try the limits cheaply, in-process checks only).
DATASET_ARCHIVE_LIMITS: ArchiveLimits | None = None


def model_check_limits() -> tuple[int, float]:
    """(memory bytes, seconds) of one model check, from the settings."""
    return settings.CHECK_MODEL_MEMORY_MB << 20, float(settings.CHECK_SECONDS)


def dataset_check_limits() -> DatasetCheckLimits:
    """What a dataset archive may expand to and what its check may use, from the settings
    (``DATASET_ARCHIVE_LIMITS`` replaces the archive's part when a test sets it)."""
    limits = limits_from_settings(settings)
    if DATASET_ARCHIVE_LIMITS is not None:
        limits = replace(limits, archive=DATASET_ARCHIVE_LIMITS)
    return limits


def _remove_empty_folders(name: str) -> None:
    """Remove the folders above storage name ``name`` that are left empty (an owner's
    ``datasets/<id>``, then ``datasets``), up to MEDIA_ROOT: a refused first upload leaves none."""
    root = Path(default_storage.path("")).resolve()
    folder = Path(default_storage.path(name)).parent
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): the folders above are not empty either
            return
        folder = folder.parent


def create_model_upload(user, form) -> ModelUpload:
    """Store a valid ``ModelUploadForm``'s upload as "checking" and send its pre-flight to the
    checking worker (once the row is committed)."""
    upload = form.save(commit=False)
    upload.owner, upload.status, upload.error, upload.preflight = user, ModelUpload.Status.CHECKING, "", {}
    with transaction.atomic():
        try:
            upload.save()  # stores the file too
        except BaseException:
            if upload.file.name:
                upload.file.storage.delete(upload.file.name)
            raise
        enqueue.enqueue_check("check_model_upload", upload.pk)
    return upload


def check_model_upload(upload: ModelUpload, *, runner: Runner = run_limited) -> bool:
    """Run the pre-flight of ``upload``'s stored file in a bounded child; set its status, report,
    error and the child's peak memory; save nothing.

    A built-in architecture's weights are loaded into it; an ONNX file (source ``onnx``) is
    converted and checked against ONNX Runtime, and its classes, input channels and resolution are
    read from the file into the upload's fields. ``runner`` is ``run_limited`` (unit tests may
    pass one that runs the same function in their own process).
    """
    spec = None
    if upload.source != "onnx":
        spec = {"arch": upload.arch, "num_classes": upload.num_classes, "in_channels": upload.in_channels,
                "width": float(upload.width), "resolution": upload.resolution}
    memory_bytes, seconds = model_check_limits()
    check = check_model_file(upload.file.path, upload.source, spec,
                             allow_pickled_modules=settings.NETADAPT_ALLOW_PICKLED_MODELS,
                             memory_bytes=memory_bytes, seconds=seconds, runner=runner)
    upload.check_peak_bytes = check.peak_rss_bytes
    if not check.accepted:
        upload.status, upload.error, upload.preflight = ModelUpload.Status.REJECTED, check.error, {}
        return False
    if upload.source == "onnx":
        upload.arch, upload.width = "", 1.0
        for name, value in check.fields.items():
            setattr(upload, name, value)
    upload.status, upload.error, upload.preflight = ModelUpload.Status.READY, "", check.report
    return True


def finish_model_check(upload_id: int, *, runner: Runner = run_limited) -> str | None:
    """What the checking worker does with a model upload: check it, record the verdict (a
    rejected upload's file is deleted). None when the row is gone or no longer checking."""
    upload = ModelUpload.objects.filter(pk=upload_id, status=ModelUpload.Status.CHECKING).first()
    if upload is None:
        return None
    name = upload.file.name
    check_model_upload(upload, runner=runner)
    if upload.status == ModelUpload.Status.REJECTED:
        upload.file.name = ""
    fields = ["status", "error", "preflight", "check_peak_bytes", "file", "arch", "width",
              "num_classes", "in_channels", "resolution"]
    values = {field: getattr(upload, field) for field in fields}
    values["file"] = upload.file.name
    recorded = ModelUpload.objects.filter(pk=upload_id, status=ModelUpload.Status.CHECKING).update(**values)
    if upload.status == ModelUpload.Status.REJECTED or not recorded:  # rejected, or deleted while it was checked
        default_storage.delete(name)
        _remove_empty_folders(name)
    return upload.status if recorded else None


def create_dataset_upload(user, form) -> Dataset:
    """Store a valid ``DatasetUploadForm``'s zip as a "checking" dataset and send its extraction
    to the checking worker (once the row is committed)."""
    return store_dataset_upload(user, form.cleaned_data["name"], form.cleaned_data["archive"],
                                resolution=form.cleaned_data["resolution"], grayscale=form.grayscale)


def store_dataset_upload(owner, name: str, uploaded, *, resolution: int,
                         grayscale: bool | None) -> Dataset:
    """Store ``uploaded`` (a zip, unread) as ``<folder>.zip`` and create its "checking" row.

    The folder, ``MEDIA_ROOT/datasets/<owner id>/<random hex>/<class>/<image>``, is where the
    checking worker extracts it (``finish_dataset_check``); until then the row's ``archive`` is the
    zip. Nothing here opens the archive.
    """
    folder = uploaded_dataset_name(owner.pk)
    stored = default_storage.save(f"{folder}.zip", uploaded)
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(owner=owner, name=name, kind="folder", archive=stored,
                                             summary={"name": name}, status=Dataset.Status.CHECKING)
            enqueue.enqueue_check("check_dataset_upload", dataset.pk, resolution, grayscale)
    except BaseException:
        default_storage.delete(stored)
        _remove_empty_folders(stored)
        raise
    return dataset


def finish_dataset_check(dataset_id: int, resolution: int, grayscale: bool | None) -> str | None:
    """What the checking worker does with a dataset upload: extract and check the stored zip in
    a bounded child (``check_dataset_archive``), delete the zip, record the verdict. A refused
    archive leaves a "rejected" row with the reason and no files. None when the row is gone or no
    longer checking."""
    dataset = Dataset.objects.filter(pk=dataset_id, status=Dataset.Status.CHECKING).first()
    if dataset is None:
        return None
    stored = dataset.archive.name
    folder = stored.removesuffix(".zip")
    destination = Path(default_storage.path(folder))
    zip_path = default_storage.path(stored)
    try:
        check = check_dataset_archive(zip_path, destination, resolution=resolution, grayscale=grayscale,
                                      limits=dataset_check_limits())
    except ArchiveError as error:  # DatasetRejected: nothing extracted is left
        peak = getattr(error, "peak_rss_bytes", None)
        values = {"status": Dataset.Status.REJECTED, "error": f"Rejected: {error}", "archive": "",
                  "check_peak_bytes": peak}
    else:
        values = {"status": Dataset.Status.READY, "error": "", "archive": folder, "check_peak_bytes": check.peak_rss_bytes,
                  "summary": {**check.summary, "name": dataset.name}}
    finally:
        default_storage.delete(stored)
    recorded = Dataset.objects.filter(pk=dataset_id, status=Dataset.Status.CHECKING).update(**values)
    if values["status"] == Dataset.Status.REJECTED or not recorded:  # rejected, or deleted while it was checked
        shutil.rmtree(destination, ignore_errors=True)
        _remove_empty_folders(folder)
    return values["status"] if recorded else None
