"""Check an uploaded dataset archive in a child process bounded in memory and time.

``check_dataset_archive(zip_path, destination, resolution=...)`` is what the checking worker's task
calls: it extracts the archive into ``destination`` and decodes every image in a ``run_limited``
child (``archives.summarise_archive``: headers first, pixel limits, one image at a time, no
torch), and returns the dataset's summary with the child's peak memory. Every refusal is a
``DatasetRejected`` (an ``ArchiveError``) saying why, and leaves nothing on disk: a child killed at
its deadline cannot clean up after itself, so the parent removes what it may have left.
"""
from __future__ import annotations

import glob
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from adaptation.archives import ArchiveError, ArchiveLimits, missing_folders, remove_empty_folders, summarise_archive
from adaptation.checking.limits import ChildFailed, LimitExceeded, run_limited
from webapp.lib.formatting import human_size

#: Private writable memory of one dataset check. Measured (docs/untrusted-files.md): the child
#: imports Pillow and numpy in ~30 MB, a 25-megapixel image (the default per-image limit) peaks at
#: 288 MB (16-bit grey; RGB 241 MB), and what it keeps per image is a few numbers.
DEFAULT_MEMORY_BYTES = 512 << 20
DEFAULT_SECONDS = 300.0

#: Errors raised in the child whose message is written for the user.
USER_ERRORS = frozenset({f"{ArchiveError.__module__}.{ArchiveError.__qualname__}"})

RejectionKind = Literal["invalid", "memory", "time", "crash"]


class DatasetRejected(ArchiveError):
    """The archive cannot be used: ``kind`` says how the check ended, the message why."""

    def __init__(self, message: str, kind: RejectionKind, peak_rss_bytes: int) -> None:
        super().__init__(message)
        self.kind = kind
        self.peak_rss_bytes = peak_rss_bytes


@dataclass(frozen=True)
class DatasetCheckLimits:
    """What the archive may expand to (bytes, members, pixels) and what its check may use."""

    archive: ArchiveLimits = field(default_factory=ArchiveLimits)
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    seconds: float = DEFAULT_SECONDS


@dataclass(frozen=True)
class DatasetCheck:
    """An accepted archive: its ``DatasetSplits.summary()``-shaped summary, the check's peak memory."""

    summary: dict[str, Any]
    peak_rss_bytes: int


def limits_from_settings(conf: Any) -> DatasetCheckLimits:
    """The limits named by the settings ``conf`` (``django.conf.settings`` or any object with the
    ``DATASET_*`` and ``CHECK_*`` attributes of ``webapp/settings.py``)."""
    return DatasetCheckLimits(
        archive=ArchiveLimits(max_image_pixels=conf.DATASET_IMAGE_MAX_PIXELS,
                              max_total_pixels=conf.DATASET_MAX_PIXELS),
        memory_bytes=conf.CHECK_MEMORY_MB << 20, seconds=float(conf.CHECK_SECONDS))


def summarise_in_child(zip_path: str, destination: str, resolution: int, grayscale: bool | None,
                       archive_limits: dict[str, Any], seed: int) -> dict[str, Any]:
    """The child's side: ``summarise_archive`` with JSON arguments."""
    return summarise_archive(zip_path, Path(destination), resolution=resolution, grayscale=grayscale,
                             seed=seed, limits=ArchiveLimits(**archive_limits))


def check_dataset_archive(zip_path: str | os.PathLike[str], destination: str | os.PathLike[str], *,
                          resolution: int, grayscale: bool | None = None,
                          limits: DatasetCheckLimits = DatasetCheckLimits(), seed: int = 0) -> DatasetCheck:
    """Extract and decode the archive at ``zip_path`` into ``destination`` (which must not exist)
    in a bounded child; DatasetRejected (nothing left on disk) when it cannot be used."""
    destination = Path(destination).resolve()
    if destination.exists() or destination.is_symlink():
        raise FileExistsError(f"{destination} already exists")
    created = missing_folders(destination.parent)
    arguments = (os.fspath(Path(zip_path).resolve()), os.fspath(destination), resolution, grayscale,
                 asdict(limits.archive), seed)
    try:
        run = run_limited(summarise_in_child, arguments, memory_bytes=limits.memory_bytes,
                          seconds=limits.seconds)
    except LimitExceeded as error:
        _remove_leftovers(destination, created)
        if error.kind == "memory":
            message = (f"checking the archive needed more than "
                       f"{human_size(limits.memory_bytes, trim_zero=False)} of memory; use fewer or "
                       "smaller images")
        else:
            message = f"checking the archive took longer than {limits.seconds:g} s; use fewer or smaller images"
        raise DatasetRejected(message, error.kind, error.peak_rss_bytes) from None
    except ChildFailed as error:
        _remove_leftovers(destination, created)
        if error.error_type in USER_ERRORS:
            raise DatasetRejected(error.message, "invalid", error.peak_rss_bytes) from None
        raise DatasetRejected(f"the archive could not be checked (internal error: {error.error_type})",
                              "crash", error.peak_rss_bytes) from None
    except BaseException:
        _remove_leftovers(destination, created)
        raise
    return DatasetCheck(run.value, run.peak_rss_bytes)


def _remove_leftovers(destination: Path, created: list[Path]) -> None:
    """What a child stopped mid-way may have left: the destination, its staging folders
    (``archives._staging_folder``), and the parent folders this check created."""
    shutil.rmtree(destination, ignore_errors=True)
    if destination.parent.is_dir():
        for staging in destination.parent.glob(f".{glob.escape(destination.name)}.*.partial"):
            shutil.rmtree(staging, ignore_errors=True)
    remove_empty_folders(created)
