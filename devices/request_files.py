"""The files of a measurement request's whole networks: ``MEDIA_ROOT/measurements/<hex>/<index><suffix>``.

devices times files, it does not build networks. Whoever asks for whole networks exports each
one for the request's runtime (``devices.measure.builders.network_file``: ONNX, or TorchScript
for the torch runtimes) and ``devices.requests.open_request`` writes them here, one folder of a
random name per request; ``MeasurementRequest.network_files`` records their storage names. The
local worker reads them, an agent's zip carries them.

They are needed only while the request is open, so they go when it ends (done, failed,
dropped, cancelled) and when its row is deleted (with its job, its device or its owner). The
periodic sweep removes any folder that no open request names and that is older than
``ORPHAN_SECONDS``: files left by a crash between the end of a request and their removal, or by
a transaction that wrote them and then rolled back (its request never existed).
"""
from __future__ import annotations

import logging
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterable, Sequence

from django.conf import settings

logger = logging.getLogger(__name__)

FOLDER = "measurements"
#: A folder no open request names is removed by the sweep once it is this old (seconds): younger,
#: it may belong to a request whose transaction has not committed yet.
ORPHAN_SECONDS = 3600


def _root() -> Path:
    return Path(settings.MEDIA_ROOT) / FOLDER


def _folder_of(name: str) -> Path:
    """The request folder of a storage name, refusing anything outside ``measurements/``."""
    parts = Path(name).parts
    if len(parts) != 3 or parts[0] != FOLDER or parts[1] in ("", ".", ".."):
        raise ValueError(f"not the name of a measurement request's file: {name!r}")
    return _root() / parts[1]


def write_files(files: Sequence[bytes], suffix: str) -> list[str]:
    """Store ``files`` in a new folder; their storage names, in order."""
    token = secrets.token_hex(16)
    folder = _root() / token
    folder.mkdir(parents=True)
    names = []
    for index, data in enumerate(files):
        name = f"{FOLDER}/{token}/{index}{suffix}"
        (folder / f"{index}{suffix}").write_bytes(data)
        names.append(name)
    return names


def read_file(name: str) -> bytes:
    """The bytes of one stored file (FileNotFoundError when it is gone)."""
    folder = _folder_of(name)
    return (folder / Path(name).name).read_bytes()


def remove_files(names: Iterable[str]) -> None:
    """Remove the folders holding ``names`` (nothing when they are gone already)."""
    for folder in {_folder_of(name) for name in names}:
        shutil.rmtree(folder, ignore_errors=True)


def folder_names(names: Iterable[str]) -> set[str]:
    """The folder names (``<hex>``) of storage names."""
    return {_folder_of(name).name for name in names}


def sweep_files(keep: set[str], now: float | None = None) -> list[str]:
    """Remove every request folder not in ``keep`` (folder names) older than ``ORPHAN_SECONDS``;
    the names of those removed."""
    root = _root()
    if not root.is_dir():
        return []
    limit = (time.time() if now is None else now) - ORPHAN_SECONDS
    removed = []
    for folder in sorted(root.iterdir()):
        try:
            old = folder.stat().st_mtime < limit
        except FileNotFoundError:  # removed meanwhile (its request ended)
            continue
        if folder.name not in keep and old:
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                folder.unlink(missing_ok=True)
            removed.append(folder.name)
    if removed:
        logger.info("removed the files of %d measurement request(s) no open request names", len(removed))
    return removed
