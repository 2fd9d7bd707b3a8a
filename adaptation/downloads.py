"""What a job gives back: its network files and its report.

- ``job_file(job, number, fmt)``: where a job's network file is (the final network, or an
  iteration's); ``open_iteration_file(job, number, fmt)`` serves one (exported on demand, checked
  against PyTorch).
- ``report_rows(job)``, ``report_csv(job)``, ``report_json(job)``, ``report_file(job, fmt)``: the
  iterations as a table (spreadsheet formulas neutralised: ``csv_cell``).
"""
from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import BinaryIO

from adaptation.formatting import PHASE_LABELS
from adaptation.job_files import FORMAT_LABELS, FORMAT_SUFFIXES, JobFiles
from adaptation.models import Iteration, Job


#: Download formats of an iteration's network (PyTorch, the one kept, first).
ITERATION_FORMATS = ("pytorch", "onnx", "torchscript")
#: Report formats and their content types.
REPORT_FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8"}
REPORT_COLUMNS = ("iteration", "chosen_group", "target", "resource", "resource_raw", "measured_ms",
                  "measured_min_ms", "measured_median_ms", "macs", "params", "holdout_accuracy",
                  "validation_accuracy", "proposals", "wall_s",
                  *(f"phase_{key}" for key in PHASE_LABELS))


class FileUnavailable(Exception):
    """The requested file does not exist (yet) and cannot be made; the message says why."""


class ExportFailed(Exception):
    """An on-demand export could not be made or did not reproduce the PyTorch network."""


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
