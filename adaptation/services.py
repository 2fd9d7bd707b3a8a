"""What the pages and the REST API both do with models, datasets and jobs, outside any request.

The rules stay where they are (the forms, ``check_model_upload``, ``store_dataset_upload``,
``report_rows``); these functions only run them and store the result, so the API and the pages
answer the same input the same way. Failures the user can fix raise ``Rejected`` naming a field.

- ``create_model_upload(user, form)``: pre-flight a valid ``ModelUploadForm``, store it if it passes.
- ``create_dataset_upload(user, form)``: extract a valid ``DatasetUploadForm``'s zip, create the row.
- ``create_job(user, form)``: create the job of a valid ``JobForm`` and hand it to the runner.
- ``cancel_job(job)``: stop a queued or waiting job now, ask a running one to stop.
- ``open_iteration_file(job, number, fmt)``: one iteration's network as a file (exported on demand).
- ``report_csv(job)``, ``report_json(job)``: the job's report.
"""
from __future__ import annotations

import csv
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.db import transaction
from django.utils import timezone

from adaptation.models import Iteration, Job, ModelUpload
from webapp.events import publish

#: Download formats of an iteration's network, and the suffix of the file name they get.
ITERATION_FORMATS = {"pytorch": ".pt", "onnx": ".onnx", "torchscript": ".torchscript.pt"}


class Rejected(Exception):
    """Input that passed the form but not the deeper check; ``field`` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


class FileUnavailable(Exception):
    """The requested file does not exist (yet) and cannot be made; the message says why."""


class ExportFailed(Exception):
    """An on-demand export could not be made or did not reproduce the PyTorch network."""


# --------------------------------------------------------------------------- uploads


def create_model_upload(user, form) -> ModelUpload:
    """Store a valid ``ModelUploadForm``'s upload if the pre-flight accepts it, else ``Rejected``.

    A rejected upload leaves no row and no file (the page's ``model_upload`` view does the same).
    """
    from adaptation.views_models import check_model_upload

    upload = form.save(commit=False)
    upload.owner = user
    if not check_model_upload(upload):
        raise Rejected("file", f"Rejected: {upload.error}")
    try:
        upload.save()  # stores the file too
    except BaseException:
        if upload.file.name:
            upload.file.storage.delete(upload.file.name)
        raise
    return upload


def create_dataset_upload(user, form):
    """Extract a valid ``DatasetUploadForm``'s archive and create its row, else ``Rejected``."""
    from adaptation.archives import ArchiveError
    from adaptation.views_datasets import store_dataset_upload

    try:
        return store_dataset_upload(user, form.cleaned_data["name"], form.cleaned_data["archive"],
                                    resolution=form.cleaned_data["resolution"], grayscale=form.grayscale)
    except ArchiveError as error:
        raise Rejected("archive", f"Rejected: {error}") from None


# --------------------------------------------------------------------------- jobs


def create_job(user, form) -> Job:
    """The job of a valid ``JobForm``, queued; the runner gets it once the row is committed."""
    from adaptation.tasks import enqueue_job  # imported late: it loads the runner (and torch)

    with transaction.atomic():
        job = Job.objects.create(owner=user, kind="adapt", model=form.cleaned_data["model"],
                                 dataset=form.cleaned_data["dataset"], device=form.cleaned_data["device"],
                                 settings=form.job_settings())
        enqueue_job(job)
    return job


@dataclass(frozen=True)
class CancelOutcome:
    """``done``: "cancelled" (stopped now), "requested" (stops after its step) or "inactive"."""

    done: str
    message: str


def cancel_job(job: Job) -> CancelOutcome:
    """Cancel ``job``: queued or waiting jobs stop now, a running one at its next check."""
    if not job.is_active:
        return CancelOutcome("inactive", f"Job #{job.pk} is already {job.get_status_display().lower()}.")
    # No worker holds a queued or waiting job (a claim moves it to running with a conditional
    # UPDATE, which this one races fairly): it stops here. A running job stops at its next check.
    cancelled = Job.objects.filter(pk=job.pk, status__in=("queued", "waiting")).update(
        status="cancelled", cancel_requested=True, finished_at=timezone.now())
    if cancelled:
        publish(job.pk, "job.status", {"status": "cancelled", "error": ""})
        return CancelOutcome("cancelled", f"Job #{job.pk} is cancelled.")
    if not Job.objects.filter(pk=job.pk, status="running").update(cancel_requested=True):
        job.refresh_from_db()  # it ended between the two updates
        return CancelOutcome("inactive", f"Job #{job.pk} is already {job.get_status_display().lower()}.")
    publish(job.pk, "job.log", {"level": "warning",
                                "message": "Cancel requested: the job stops after its current step."})
    return CancelOutcome("requested", f"Cancel requested: job #{job.pk} stops after its current step.")


def final_iteration_number(job: Job) -> int | None:
    """The iteration whose network the ``final.*`` files hold (long-term fine-tuned); None until
    the job has finished."""
    iterations = (job.result or {}).get("iterations")
    if job.status != "finished" or not isinstance(iterations, int):
        return None
    return iterations - 1


def open_iteration_file(job: Job, number: int, fmt: str) -> tuple[BinaryIO, str]:
    """(open file, download name) of iteration ``number``'s network in ``fmt``.

    The final iteration of a finished job is its ``final.*`` files. Other iterations have only a
    PyTorch file; ONNX and TorchScript are exported from it into an anonymous temporary file,
    each export checked against PyTorch. ``FileUnavailable`` when there is nothing to serve,
    ``ExportFailed`` when the export fails.
    """
    from adaptation.views_jobs import FINAL_FILES, FORMAT_LABELS, iteration_path, job_folder

    iteration = Iteration.objects.filter(job=job, number=number).first()
    if iteration is None:
        raise FileUnavailable(f"Job #{job.pk} has no iteration {number}.")
    label = FORMAT_LABELS[fmt]
    download_name = f"job{job.pk}-iteration{number:03d}{ITERATION_FORMATS[fmt]}"
    if number == final_iteration_number(job):
        path = job_folder(job) / FINAL_FILES[fmt][0]
        return _open(path, f"The final {label} file of job #{job.pk} is missing."), download_name
    if number < 0:
        raise FileUnavailable(f"Iteration {number} is the original network: download it as the uploaded "
                              "model's weights, not from the job.")
    source = iteration_path(job, iteration, number)
    missing = f"The PyTorch file of iteration {number} of job #{job.pk} is missing."
    if fmt == "pytorch":
        return _open(source, missing), download_name
    if not source.is_file():
        raise FileUnavailable(missing)
    return _export(source, fmt, label), download_name


def _open(path: Path, missing: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError:
        raise FileUnavailable(missing) from None


def _export(source: Path, fmt: str, label: str) -> BinaryIO:
    """``source`` (an ``export_pytorch`` file) exported to ``fmt`` and checked against PyTorch,
    in an anonymous temporary file (gone once the response closes it)."""
    import torch

    from adaptation.netadapt.export import ExportMismatch, export_onnx, export_torchscript, load_pytorch
    from adaptation.netadapt.spec import ArchitectureSpec

    data = source.read_bytes()
    try:
        model = load_pytorch(io.BytesIO(data))
        spec = ArchitectureSpec.from_dict(torch.load(io.BytesIO(data), weights_only=True)["architecture"])
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise ExportFailed(f"The iteration's PyTorch file cannot be read: {error}") from None
    export = export_onnx if fmt == "onnx" else export_torchscript
    with tempfile.TemporaryDirectory(prefix="netadapt-export-") as folder:
        path = Path(folder) / f"model{ITERATION_FORMATS[fmt]}"
        try:
            export(model, spec.example_input(), path)
        except (ExportMismatch, RuntimeError, ValueError) as error:
            raise ExportFailed(f"Exporting to {label} failed: {error}") from None
        handle = tempfile.TemporaryFile()
        handle.write(path.read_bytes())
    handle.seek(0)
    return handle


# --------------------------------------------------------------------------- reports


def report_csv(job: Job) -> str:
    """One row per recorded iteration, the columns of ``REPORT_COLUMNS``."""
    from adaptation.views_jobs import REPORT_COLUMNS, report_rows

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in report_rows(job))
    return buffer.getvalue()


def report_json(job: Job) -> dict:
    """The job, its settings and result, and every iteration with its channels and proposals."""
    from adaptation.views_jobs import REPORT_COLUMNS, report_rows

    return {
        "job": {"id": job.pk, "kind": job.kind, "status": job.status, "error": job.error,
                "model": job.model.name, "dataset": job.dataset.name, "device": job.device.name,
                "created": job.created.isoformat(),
                "finished": job.finished_at.isoformat() if job.finished_at else None},
        "settings": job.settings, "result": job.result,
        "iterations": [{**{k: row[k] for k in REPORT_COLUMNS if k != "proposals"},
                        "channels": row["_channels"], "proposals": row["_proposals"]}
                       for row in report_rows(job)],
    }
