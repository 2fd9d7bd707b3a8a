"""What the pages and the REST API both do with models, datasets and jobs, outside any request.

Views and API modules call these, never the reverse, so both answer the same input the same way.
Failures the user can fix raise ``Rejected`` naming a field; ``create_from(form, user, create)``
turns one into an error on the form.

- ``check_model_upload(upload)``: the pre-flight of an upload's file (weights or ONNX), recorded
  on the row.
- ``create_model_upload(user, form)``: pre-flight a valid ``ModelUploadForm``, store it if it passes.
- ``store_dataset_upload(...)``, ``create_dataset_upload(user, form)``: extract an uploaded zip
  into its own folder (``job_files.uploaded_dataset_name``) and create the dataset's row.
- ``create_job(user, form)``: create the job of a valid ``JobForm`` and hand it to the runner
  (through ``queue_job``, which child jobs use too).
- ``cancel_job(job)``: stop a queued or waiting job now, ask a running one to stop.
- ``job_file(job, number, fmt)``: where a job's network file is (the final network, or an
  iteration's); ``open_iteration_file(job, number, fmt)`` serves one (exported on demand).
- ``report_rows(job)``, ``report_csv(job)``, ``report_json(job)``, ``report_file(job, fmt)``.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, TypeVar

from django import forms
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from adaptation.archives import (ArchiveError, ArchiveLimits, load_archive_dataset, missing_folders,
                                 remove_empty_folders)
from adaptation.formatting import PHASE_LABELS
from adaptation.job_files import FORMAT_LABELS, FORMAT_SUFFIXES, JobFiles, uploaded_dataset_name
from adaptation.models import Dataset, Iteration, Job, ModelUpload
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation.netadapt.training import HOOK_EVERY
from adaptation.preflight import PreflightError, load_onnx, load_weights, preflight
from devices.requests import drop_queued_requests
from webapp.events import publish

#: Download formats of an iteration's network (PyTorch, the one kept, first).
ITERATION_FORMATS = ("pytorch", "onnx", "torchscript")
#: Report formats and their content types.
REPORT_FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8"}
REPORT_COLUMNS = ("iteration", "chosen_group", "target", "resource", "resource_raw", "measured_ms",
                  "measured_min_ms", "measured_median_ms", "macs", "params", "holdout_accuracy",
                  "validation_accuracy", "proposals", "wall_s",
                  *(f"phase_{key}" for key in PHASE_LABELS))
#: What an uploaded archive may expand to (tests replace it to try the limits cheaply).
DATASET_ARCHIVE_LIMITS = ArchiveLimits()

T = TypeVar("T")


class Rejected(Exception):
    """Input that passed the form but not the deeper check; ``field`` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


class FileUnavailable(Exception):
    """The requested file does not exist (yet) and cannot be made; the message says why."""


class ExportFailed(Exception):
    """An on-demand export could not be made or did not reproduce the PyTorch network."""


def create_from(form: forms.BaseForm, user, create: Callable[[Any, Any], T]) -> T | None:
    """``create(user, form)`` when the form is valid; None when it is not or ``create`` raised
    ``Rejected`` (whose message is then the form's error on the field it names)."""
    if not form.is_valid():
        return None
    try:
        return create(user, form)
    except Rejected as rejected:
        form.add_error(rejected.field, rejected.message)
        return None


# --------------------------------------------------------------------------- uploads


def check_model_upload(upload: ModelUpload) -> bool:
    """Run the pre-flight on ``upload``'s file; set its status, report and error; save nothing.

    A built-in architecture's weights are loaded into it; an ONNX file (source ``onnx``) is
    converted and checked against ONNX Runtime, and its classes, input channels and resolution
    are read from the file into the upload's fields. Ready: ``preflight`` holds the report
    (groups, MACs, params...). Rejected: ``error`` holds the message for the user. It runs in the
    request for now (seconds for big networks); it only reads ``upload.file`` (an upload not yet
    stored, or a stored file) and sets fields, so a Celery task can call it as is on a saved row
    and save the result.
    """
    allow_pickled = settings.NETADAPT_ALLOW_PICKLED_MODELS
    try:
        upload.file.open("rb")  # keeps an unsaved upload's temporary file; it is stored later
        if upload.source == "onnx":
            spec, model = load_onnx(upload.file)
            upload.arch, upload.width = "", 1.0
            upload.num_classes, upload.in_channels = spec.num_classes, spec.in_channels
            upload.resolution = spec.resolution
        else:
            spec = ArchitectureSpec(arch=upload.arch, num_classes=upload.num_classes,
                                    in_channels=upload.in_channels, width=float(upload.width),
                                    resolution=upload.resolution)
            model = load_weights(upload.file, spec, allow_pickled_modules=allow_pickled)
        report = preflight(model, spec)
    except PreflightError as error:
        upload.status, upload.error, upload.preflight = "rejected", str(error), {}
        return False
    upload.status, upload.error, upload.preflight = "ready", "", report.to_dict()
    return True


def create_model_upload(user, form) -> ModelUpload:
    """Store a valid ``ModelUploadForm``'s upload if the pre-flight accepts it, else ``Rejected``.

    A rejected upload leaves no row and no file.
    """
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


def store_dataset_upload(owner, name: str, uploaded, *, resolution: int,
                         grayscale: bool | None) -> Dataset:
    """Extract ``uploaded`` (a zip) into a new folder and create its row; ArchiveError if unusable.

    The folder, ``MEDIA_ROOT/datasets/<owner id>/<random hex>/<class>/<image>``, is the row's
    ``archive`` (jobs load it with ``load_image_folder``); the zip itself is not kept. On any
    error nothing is left: ``load_archive_dataset`` removes what it extracted and the folders it
    created (the owner's folder of a first upload), and so does a row that cannot be created.
    """
    folder = uploaded_dataset_name(owner.pk)
    destination = Path(default_storage.path(folder))
    created = missing_folders(destination.parent)
    source = (uploaded.temporary_file_path() if hasattr(uploaded, "temporary_file_path")
              else uploaded.file)
    splits = load_archive_dataset(source, destination, resolution=resolution, grayscale=grayscale,
                                  limits=DATASET_ARCHIVE_LIMITS)
    summary = splits.summary()
    summary["name"] = name
    try:
        return Dataset.objects.create(owner=owner, name=name, kind="folder", archive=folder,
                                      summary=summary, status="ready")
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        remove_empty_folders(created)
        raise


def create_dataset_upload(user, form) -> Dataset:
    """Extract a valid ``DatasetUploadForm``'s archive and create its row, else ``Rejected``."""
    try:
        return store_dataset_upload(user, form.cleaned_data["name"], form.cleaned_data["archive"],
                                    resolution=form.cleaned_data["resolution"], grayscale=form.grayscale)
    except ArchiveError as error:
        raise Rejected("archive", f"Rejected: {error}") from None


# --------------------------------------------------------------------------- jobs


def queue_job(owner, *, model: ModelUpload, dataset: Dataset, device, settings: dict,
              kind: str = "adapt", parent: Job | None = None) -> Job:
    """A new job row, queued; the runner gets it once the row is committed.

    The one place jobs are created: ``create_job`` (a user's form) and ``start_child_job`` call it.
    ``settings`` is what ``Job.settings`` stores (``job_inputs.parse_settings`` reads it).
    """
    from adaptation.tasks import enqueue_job  # imported late: it loads the runner and Celery

    with transaction.atomic():
        job = Job.objects.create(owner=owner, kind=kind, parent=parent, model=model, dataset=dataset,
                                 device=device, settings=settings)
        enqueue_job(job)
    return job


def create_job(user, form) -> Job:
    """The job of a valid ``JobForm``, queued; the runner gets it once the row is committed."""
    return queue_job(user, model=form.cleaned_data["model"], dataset=form.cleaned_data["dataset"],
                     device=form.cleaned_data["device"], settings=form.job_settings())


@dataclass(frozen=True)
class CancelOutcome:
    """``done``: "cancelled" (stopped now), "requested" (stops at its next step) or "inactive"."""

    done: str
    message: str


def start_child_job(parent: Job, kind: str, **options) -> Job:
    """A child job of ``parent`` (its model, data, device and settings, plus ``options``),
    enqueued once the transaction commits."""
    return queue_job(parent.owner, kind=kind, parent=parent, model=parent.model, dataset=parent.dataset,
                     device=parent.device, settings={**parent.settings, **options})


def cancel_job(job: Job) -> CancelOutcome:
    """Cancel ``job``: queued or waiting jobs stop now, a running one at its next check."""
    if not job.is_active:
        return CancelOutcome("inactive", f"Job #{job.pk} is already {job.get_status_display().lower()}.")
    # No worker holds a queued or waiting job (a claim moves it to running with a conditional
    # UPDATE, which this one races fairly): it stops here. A running job stops at its next check.
    cancelled = Job.objects.filter(pk=job.pk, status__in=("queued", "waiting")).update(
        status="cancelled", cancel_requested=True, finished_at=timezone.now())
    if cancelled:
        drop_queued_requests(job.pk, "the job was cancelled")
        publish(job.pk, "job.status", {"status": "cancelled", "error": ""})
        return CancelOutcome("cancelled", f"Job #{job.pk} is cancelled.")
    if not Job.objects.filter(pk=job.pk, status="running").update(cancel_requested=True):
        job.refresh_from_db()  # it ended between the two updates
        return CancelOutcome("inactive", f"Job #{job.pk} is already {job.get_status_display().lower()}.")
    publish(job.pk, "job.log", {"level": "warning",
                                "message": "Cancel requested: the job stops at its next step "
                                           f"(within {HOOK_EVERY} steps of a fine-tune)."})
    return CancelOutcome("requested", f"Cancel requested: job #{job.pk} stops at its next step "
                                      f"(within {HOOK_EVERY} steps of a fine-tune).")


# --------------------------------------------------------------------------- files


def final_iteration_number(job: Job) -> int | None:
    """The iteration whose network the ``final.*`` files hold (long-term fine-tuned); None until
    the job has finished."""
    iterations = (job.result or {}).get("iterations")
    if job.status != "finished" or not isinstance(iterations, int):
        return None
    return iterations - 1


def job_file(job: Job, number: int | None, fmt: str = "pytorch", *,
             iteration: Iteration | None = None) -> Path:
    """Where one of ``job``'s network files is (it may not exist yet).

    ``number`` None: the final network in ``fmt`` (a key of ``FORMAT_SUFFIXES``). Else iteration
    ``number``'s PyTorch file, the only format kept per iteration: its row's file if recorded,
    else its name in the job's folder. ``iteration`` is that row when the caller has it already.
    """
    files = JobFiles(job.pk)
    if number is None:
        return files.final_path(fmt)
    if fmt != "pytorch":
        raise ValueError("iterations are kept as PyTorch files only")
    if iteration is None:
        iteration = Iteration.objects.filter(job=job, number=number).first()
    return files.iteration_path(number, iteration.model_file if iteration is not None else None)


def download_name(job: Job, number: int | None, fmt: str) -> str:
    """``job7-final.onnx``, ``job7-iteration003.pt``: the file name a download gets."""
    stem = "final" if number is None else f"iteration{number:03d}"
    return f"job{job.pk}-{stem}{FORMAT_SUFFIXES[fmt]}"


def open_iteration_file(job: Job, number: int, fmt: str) -> tuple[BinaryIO, str]:
    """(open file, download name) of iteration ``number``'s network in ``fmt``.

    The final iteration of a finished job is its ``final.*`` files. Other iterations have only a
    PyTorch file; ONNX and TorchScript are exported from it into an anonymous temporary file,
    each export checked against PyTorch. ``FileUnavailable`` when there is nothing to serve,
    ``ExportFailed`` when the export fails.
    """
    iteration = Iteration.objects.filter(job=job, number=number).first()
    if iteration is None:
        raise FileUnavailable(f"Job #{job.pk} has no iteration {number}.")
    label = FORMAT_LABELS[fmt]
    filename = download_name(job, number, fmt)
    if number == final_iteration_number(job):
        missing = f"The final {label} file of job #{job.pk} is missing."
        return _open(job_file(job, None, fmt), missing), filename
    if number < 0:
        raise FileUnavailable(f"Iteration {number} is the original network: download it as the uploaded "
                              "model's weights, not from the job.")
    source = job_file(job, number, iteration=iteration)
    missing = f"The PyTorch file of iteration {number} of job #{job.pk} is missing."
    if fmt == "pytorch":
        return _open(source, missing), filename
    if not source.is_file():
        raise FileUnavailable(missing)
    return _export(source, fmt, label), filename


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

    data = source.read_bytes()
    try:
        model = load_pytorch(io.BytesIO(data))
        spec = ArchitectureSpec.from_dict(torch.load(io.BytesIO(data), weights_only=True)["architecture"])
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise ExportFailed(f"The iteration's PyTorch file cannot be read: {error}") from None
    export = export_onnx if fmt == "onnx" else export_torchscript
    with tempfile.TemporaryDirectory(prefix="netadapt-export-") as folder:
        path = Path(folder) / f"model{FORMAT_SUFFIXES[fmt]}"
        try:
            export(model, spec.example_input(), path)
        except (ExportMismatch, RuntimeError, ValueError) as error:
            raise ExportFailed(f"Exporting to {label} failed: {error}") from None
        handle = tempfile.TemporaryFile()
        handle.write(path.read_bytes())
    handle.seek(0)
    return handle


# --------------------------------------------------------------------------- reports


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
            "wall_s": record.get("wall_s"),
            **{f"phase_{key}": (record.get("phases_s") or {}).get(key) for key in PHASE_LABELS},
            "_channels": record.get("channels", {}),
            "_proposals": [{"group": p.group, "channels": p.channels, "resource": p.resource,
                            "holdout_accuracy": p.holdout_accuracy, "chosen": p.chosen} for p in proposals],
        })
    return rows


#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV injection").
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A report cell that no spreadsheet runs: text starting with a formula trigger gets a leading
    single quote (OWASP's rule); numbers stay numbers. Text cells hold names a user chose (group
    names come from the node names of an uploaded ONNX file); numbers are ours, and a negative
    one such as -1 (the original network's iteration) is a value to a spreadsheet, not a formula."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def report_csv(job: Job) -> str:
    """One row per recorded iteration, the columns of ``REPORT_COLUMNS`` (cells by ``csv_cell``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in report_rows(job))
    return buffer.getvalue()


def report_json(job: Job) -> dict:
    """The job, its settings and result, and every iteration with its channels and proposals."""
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


def report_file(job: Job, fmt: str) -> tuple[str, str, str]:
    """(text, content type, file name) of the job's report in ``fmt``, a key of ``REPORT_FORMATS``."""
    content_type = REPORT_FORMATS[fmt]
    text = report_csv(job) if fmt == "csv" else json.dumps(report_json(job), indent=1, default=str)
    return text, content_type, f"job{job.pk}-report.{fmt}"
