"""What the pages and the REST API both do with models, datasets and jobs, outside any request.

Views and API modules call these, never the reverse, so both answer the same input the same way.
Failures the user can fix raise ``Rejected`` naming a field; ``create_from(form, user, create)``
turns one into an error on the form.

- ``create_model_upload(user, form)``, ``create_dataset_upload(user, form)``
  (``store_dataset_upload``): store an upload as "checking" and send its check to the checking
  worker, whose tasks call ``finish_model_check`` / ``finish_dataset_check`` (``check_model_upload``:
  the pre-flight of a model's stored file in a bounded child, recorded on the row).
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable, TypeVar

from django import forms
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from adaptation import enqueue
from adaptation.archives import ArchiveError, ArchiveLimits
from adaptation.checking.datasets import DatasetCheckLimits, check_dataset_archive, limits_from_settings
from adaptation.checking.limits import run_limited
from adaptation.checking.models import Runner, check_model_file
from adaptation.events import publish
from adaptation.formatting import PHASE_LABELS
from adaptation.job_files import FORMAT_LABELS, FORMAT_SUFFIXES, JobFiles, uploaded_dataset_name
from adaptation.models import Dataset, Iteration, Job, ModelUpload
from adaptation.netadapt.training import HOOK_EVERY
from devices.requests import drop_queued_requests

#: Download formats of an iteration's network (PyTorch, the one kept, first).
ITERATION_FORMATS = ("pytorch", "onnx", "torchscript")
#: Report formats and their content types.
REPORT_FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8"}
REPORT_COLUMNS = ("iteration", "chosen_group", "target", "resource", "resource_raw", "measured_ms",
                  "measured_min_ms", "measured_median_ms", "macs", "params", "holdout_accuracy",
                  "validation_accuracy", "proposals", "wall_s",
                  *(f"phase_{key}" for key in PHASE_LABELS))
#: What an uploaded archive may expand to; None: the settings' pixel limits and ArchiveLimits'
#: byte and member limits (tests replace it to try the limits cheaply, in-process checks only).
DATASET_ARCHIVE_LIMITS: ArchiveLimits | None = None

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
# An upload is stored at once with status "checking" and its check is sent to the checking worker
# (``tasks.check_model_upload`` / ``check_dataset_upload``, queue ``checking``) once the row is
# committed. The worker runs the check in a child process under the ceilings of the settings
# (``adaptation.checking``) and moves the row to "ready" or "rejected" with the reason; nothing of
# a rejected upload stays on disk. No upload is parsed in the web process.


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


# --------------------------------------------------------------------------- jobs


def queue_job(owner, *, model: ModelUpload, dataset: Dataset, device, settings: dict,
              kind: str = "adapt", parent: Job | None = None) -> Job:
    """A new job row, queued; the runner gets it once the row is committed.

    The one place jobs are created: ``create_job`` (a user's form) and ``start_child_job`` call it.
    ``settings`` is what ``Job.settings`` stores (``job_inputs.parse_settings`` reads it).
    """
    with transaction.atomic():
        job = Job.objects.create(owner=owner, kind=kind, parent=parent, model=model, dataset=dataset,
                                 device=device, settings=settings)
        enqueue.enqueue_job(job)
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
    cancelled = Job.objects.filter(pk=job.pk, status__in=(Job.Status.QUEUED, Job.Status.WAITING)).update(
        status=Job.Status.CANCELLED, cancel_requested=True, finished_at=timezone.now())
    if cancelled:
        drop_queued_requests(job.pk, "the job was cancelled")
        publish(job.pk, "job.status", {"status": Job.Status.CANCELLED, "error": ""})
        return CancelOutcome("cancelled", f"Job #{job.pk} is cancelled.")
    if not Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True):
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
    if job.status != Job.Status.FINISHED or not isinstance(iterations, int):
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
    # Exports load ONNX Runtime, which the web process needs only for a download in another format.
    import torch
    from adaptation.netadapt.architectures import architecture_from_dict
    from adaptation.netadapt.export import ExportMismatch, export_onnx, export_torchscript, load_pytorch

    data = source.read_bytes()
    try:
        model = load_pytorch(io.BytesIO(data))
        spec = architecture_from_dict(torch.load(io.BytesIO(data), weights_only=True)["architecture"])
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
