"""Where a job's files live under MEDIA_ROOT, and writes that never leave half a file behind.

- ``jobs/<id>/checkpoint.pt``: the engine's AdaptState after the last finished iteration; the
  source of truth a resumed job continues from.
- ``jobs/<id>/iteration_NNN.pt``: each iteration's network (``export_pytorch``'s format).
- ``jobs/<id>/final.onnx``, ``final.torchscript.pt``, ``final.pt``: the long-term fine-tuned
  result (``export_all``).
- ``datasets/<owner id>/<random hex>/``: an uploaded image-folder archive, extracted on upload
  (the dataset's ``archive``; jobs load this folder, the zip is not kept).

Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a reader (or a resumed job) sees the old file or the new one, never a torn one.
The engine (and torch) is imported only by the functions that write or read networks, so the
models and the pages can name these paths without loading it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from django.conf import settings

if TYPE_CHECKING:
    import torch.nn as nn
    from django.db.models.fields.files import FieldFile

    from adaptation.netadapt.loop import AdaptState
    from adaptation.netadapt.architectures import Architecture

FINAL_STEM = "final"
#: Network file formats: the suffix of their file names (final files and downloads alike).
FORMAT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "pytorch": ".pt"}
#: The formats' names for people.
FORMAT_LABELS = {"onnx": "ONNX", "torchscript": "TorchScript", "pytorch": "PyTorch"}


def media_path(name: str) -> Path:
    """The local path of a storage name (a FileField's ``name``)."""
    return Path(settings.MEDIA_ROOT) / name


def job_folder_name(job_id: int) -> str:
    """Storage name of a job's folder: every file of the job is under it."""
    return f"jobs/{job_id}"


def uploaded_dataset_name(owner_id: int) -> str:
    """A new, unused storage name for the folder an uploaded archive is extracted into."""
    return f"datasets/{owner_id}/{uuid.uuid4().hex}"


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then move the result onto ``path`` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


class JobFiles:
    """The files of one job; names are storage names relative to MEDIA_ROOT."""

    def __init__(self, job_id: int) -> None:
        self.folder_name = job_folder_name(job_id)

    @property
    def folder(self) -> Path:
        return media_path(self.folder_name)

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"

    def iteration_name(self, number: int) -> str:
        return f"{self.folder_name}/iteration_{number:03d}.pt"

    def iteration_path(self, number: int, stored: FieldFile | None = None) -> Path:
        """Where iteration ``number``'s PyTorch file is: ``stored`` (its row's ``model_file``) if
        recorded and local, else its name in the job's folder."""
        if stored:
            try:
                return Path(stored.path)
            except (NotImplementedError, ValueError):
                pass
        return media_path(self.iteration_name(number))

    def final_names(self) -> dict[str, str]:
        """Storage names of the final exports by format (onnx, torchscript, pytorch)."""
        return {fmt: f"{self.folder_name}/{FINAL_STEM}{suffix}" for fmt, suffix in FORMAT_SUFFIXES.items()}

    def final_path(self, fmt: str) -> Path:
        """The final network's file in ``fmt`` (a key of ``FORMAT_SUFFIXES``)."""
        return media_path(self.final_names()[fmt])

    def load_checkpoint(self) -> AdaptState | None:
        from adaptation.netadapt.loop import AdaptState  # the engine loads in workers, not in pages

        return AdaptState.load(self.checkpoint) if self.checkpoint.exists() else None

    def save_checkpoint(self, state: AdaptState) -> None:
        write_atomically(self.checkpoint, state.save)

    def save_iteration(self, number: int, model: nn.Module, spec: Architecture,
                       channels: Mapping[str, int]) -> str:
        """Export one iteration's network; returns its storage name."""
        from adaptation.netadapt.export import export_pytorch  # ONNX Runtime: workers only

        name = self.iteration_name(number)
        write_atomically(media_path(name), lambda path: export_pytorch(model, spec, channels, path))
        return name

    def save_final(self, model: nn.Module, spec: Architecture,
                   channels: Mapping[str, int]) -> dict[str, str]:
        """Export the final network in every format (each checked against PyTorch)."""
        from adaptation.netadapt.export import export_all  # ONNX Runtime: workers only

        self.folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".final.", suffix=".partial", dir=self.folder))
        try:
            written = export_all(model, spec, channels, staging, FINAL_STEM)
            names = self.final_names()
            for export_format, path in written.items():
                os.replace(path, media_path(names[export_format]))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return names
