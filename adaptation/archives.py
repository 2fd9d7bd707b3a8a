"""Safe extraction of an uploaded zip of an image-folder dataset (``<class>/<image>``).

Everything in the central directory is validated before a byte is written: member count, paths
(absolute, ``..``, drive letters), symbolic links, encryption, compression method, declared sizes
and compression ratios. Accepted members are then streamed into a temporary folder next to the
destination, with a running byte count that stops a member growing past its declared size, and the
folder is renamed to the destination at the end: on any error nothing is left behind, not even the
parent folders the extraction created.

The images are then bounded by what they decode to (``netadapt.image_folder``: headers first,
a per-image and a per-archive pixel limit, one image decoded at a time).

Every user-facing failure is an ``ArchiveError`` naming the problem and the offending member. This
module imports neither Django nor Celery, nor torch until ``load_archive_dataset`` needs it:
``summarise_archive`` runs in a small checking process without it.
"""
from __future__ import annotations

import lzma
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Callable, TypeVar, Union

from adaptation.netadapt.image_folder import (DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_TOTAL_PIXELS,
                                              IMAGE_EXTENSIONS, InvalidDataset, PixelLimits,
                                              summarise_image_folder)
from webapp.lib.formatting import human_size

if TYPE_CHECKING:
    from adaptation.netadapt.data import DatasetSplits

T = TypeVar("T")

ZipSource = Union[str, "os.PathLike[str]", IO[bytes]]

#: Compression methods zipfile can read without extra packages.
SUPPORTED_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                   zipfile.ZIP_LZMA})
#: Folders that archivers add and that are never part of the dataset.
IGNORED_TOP_FOLDERS = frozenset({"__MACOSX"})
#: Bytes read per chunk while extracting.
CHUNK_BYTES = 1 << 16
#: Longest file-name component most filesystems accept (bytes, UTF-8).
MAX_NAME_BYTES = 255

_DRIVE = re.compile(r"^[A-Za-z]:")


class ArchiveError(ValueError):
    """The archive cannot be used; the message names the problem and the offending member."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what an uploaded archive may expand to."""

    max_members: int = 20000
    max_total_bytes: int = 1 << 30        # uncompressed, of the members extracted
    max_member_bytes: int = 20 << 20
    max_ratio: float = 200.0              # compression ratio of any member (zip bombs)
    #: Members smaller than this skip the ratio check: a small flat-colour BMP compresses >200:1
    #: legitimately, and the size limits already bound what small members can expand to.
    ratio_min_bytes: int = 1 << 16
    #: Decoded pixels (width x height from the header) of one image, and of all images together.
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_total_pixels: int = DEFAULT_MAX_TOTAL_PIXELS

    @property
    def pixels(self) -> PixelLimits:
        return PixelLimits(self.max_image_pixels, self.max_total_pixels)


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]   # normalised path components inside the archive


# --------------------------------------------------------------------------- validation


def _normalised_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """Path components of a member, refusing anything that could land outside the folder."""
    name = info.filename
    if "\x00" in name:
        raise ArchiveError(f"member {name!r} has a NUL character in its name")
    unified = name.replace("\\", "/")  # archives made on Windows sometimes use backslashes
    if unified.startswith("/"):
        raise ArchiveError(f"member '{name}' escapes the archive folder (absolute path)")
    if _DRIVE.match(unified):
        raise ArchiveError(f"member '{name}' escapes the archive folder (drive letter)")
    parts = tuple(part for part in unified.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"member '{name}' escapes the archive folder ('..' in its path)")
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise ArchiveError(f"member '{name}' has a file name longer than {MAX_NAME_BYTES} bytes")
    return parts


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _is_ignored(parts: tuple[str, ...]) -> bool:
    """macOS resource forks, dotfiles and dot-folders are not part of the dataset."""
    return not parts or parts[0] in IGNORED_TOP_FOLDERS or any(p.startswith(".") for p in parts)


def _is_image(parts: tuple[str, ...]) -> bool:
    return PurePosixPath(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS


def _scan(archive: zipfile.ZipFile, limits: ArchiveLimits) -> list[_Member]:
    """Every member's path is safe; returns the image files (not ignored) with their parts."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise ArchiveError(
            f"the archive has {len(infos)} members; at most {limits.max_members} are allowed")
    images: list[_Member] = []
    seen: dict[tuple[str, ...], str] = {}
    for info in infos:
        parts = _normalised_parts(info)
        if _is_symlink(info):
            raise ArchiveError(f"member '{info.filename}' is a symbolic link")
        if _is_ignored(parts) or info.is_dir():
            continue
        if not _is_image(parts):
            continue
        if parts in seen:
            raise ArchiveError(f"member '{info.filename}' appears twice in the archive")
        seen[parts] = info.filename
        images.append(_Member(info, parts))
    return images


def _check_member(member: _Member, limits: ArchiveLimits) -> None:
    info, name = member.info, member.info.filename
    if info.flag_bits & 0x1:
        raise ArchiveError(f"member '{name}' is encrypted; upload an archive without a password")
    if info.compress_type not in SUPPORTED_COMPRESSION:
        raise ArchiveError(
            f"member '{name}' uses an unsupported compression method ({info.compress_type}); "
            "use ordinary zip compression (deflate)")
    if info.file_size > limits.max_member_bytes:
        raise ArchiveError(
            f"member '{name}' is {human_size(info.file_size, trim_zero=False)} uncompressed; at most "
            f"{human_size(limits.max_member_bytes, trim_zero=False)} per file")
    if info.file_size >= limits.ratio_min_bytes:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_ratio:
            raise ArchiveError(
                f"member '{name}' has a compression ratio of {ratio:.0f}:1 (at most "
                f"{limits.max_ratio:g}:1); the archive looks like a zip bomb")


def _layout(images: list[_Member]) -> tuple[tuple[str, ...], list[_Member]]:
    """(wrapper prefix, members inside class folders) for either accepted layout.

    ``<class>/<image>`` at the top, or one top-level folder holding ``<class>/<image>``. Images
    elsewhere (loose at the top, or nested deeper than a class folder) are not part of the dataset.
    """
    def classes_under(prefix: tuple[str, ...]) -> list[_Member]:
        depth = len(prefix) + 2
        return [m for m in images if len(m.parts) == depth and m.parts[:len(prefix)] == prefix]

    prefix: tuple[str, ...] = ()
    members = classes_under(prefix)
    tops = {m.parts[0] for m in images if len(m.parts) >= 3}
    if len(tops) == 1:
        wrapper = (next(iter(tops)),)
        wrapped = classes_under(wrapper)
        if len({m.parts[1] for m in wrapped}) > len({m.parts[0] for m in members}):
            prefix, members = wrapper, wrapped
    classes = sorted({m.parts[len(prefix)] for m in members})
    if len(classes) < 2:
        found = f" ({', '.join(classes)})" if classes else ""
        raise ArchiveError(
            f"the archive has {len(classes)} class folder(s) with images{found}; need at least 2 "
            "(layout: <class>/<image>, or one folder holding <class>/<image>)")
    return prefix, members


def _validate(archive: zipfile.ZipFile, limits: ArchiveLimits) -> tuple[tuple[str, ...], list[_Member]]:
    images = _scan(archive, limits)
    prefix, members = _layout(images)
    total = 0
    for member in members:
        _check_member(member, limits)
        total += member.info.file_size
        if total > limits.max_total_bytes:
            limit = human_size(limits.max_total_bytes, trim_zero=False)
            raise ArchiveError(f"the archive expands to more than {limit} "
                               f"(limit reached at member '{member.info.filename}')")
    return prefix, members


# --------------------------------------------------------------------------- extraction


def _copy_member(archive: zipfile.ZipFile, member: _Member, target: Path) -> None:
    """Stream one member to ``target``, never writing more than its declared size."""
    info, name = member.info, member.info.filename
    written = 0
    try:
        with archive.open(info) as source, open(target, "xb") as sink:
            while True:
                chunk = source.read(CHUNK_BYTES)
                if not chunk:
                    break
                written += len(chunk)
                if written > info.file_size:
                    raise ArchiveError(
                        f"member '{name}' is larger than its header declares "
                        f"({info.file_size} bytes); the archive is corrupt or malicious")
                sink.write(chunk)
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError,
            zlib.error, lzma.LZMAError) as error:
        raise ArchiveError(f"member '{name}' is corrupt: {error}") from None
    except OSError as error:
        if error.errno is None:  # bz2 reports bad data as a bare OSError; real I/O errors have errno
            raise ArchiveError(f"member '{name}' is corrupt: {error}") from None
        raise
    if written != info.file_size:
        raise ArchiveError(
            f"member '{name}' has {written} bytes but its header declares {info.file_size}")


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty: a failed extraction leaves no
    folder it created. A folder another extraction has put something into meanwhile is kept."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or gone): its ancestors are not empty either


def _staging_folder(destination: Path) -> Path:
    """A new temporary folder next to ``destination``, creating the parent folders it needs.

    A failed extraction of another upload may remove a parent it created between our ``mkdir``
    and ``mkdtemp`` (``remove_empty_folders``): then the parents are made again.
    """
    attempts = 5
    while True:
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            return Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial",
                                         dir=destination.parent))
        except FileNotFoundError:
            attempts -= 1
            if not attempts:
                raise


def _extract(zip_path: ZipSource, destination: Path,
             limits: ArchiveLimits) -> tuple[tuple[str, ...], list[Path]]:
    """Validate, extract atomically into ``destination``; returns the stripped wrapper prefix and
    the parent folders this call created (for ``remove_empty_folders`` if a later step fails).
    On failure it leaves neither files nor the folders it created."""
    destination = Path(destination)
    if destination.exists() or destination.is_symlink():
        raise FileExistsError(f"{destination} already exists")
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise ArchiveError("not a zip archive") from None
    except (EOFError, ValueError, NotImplementedError, OverflowError) as error:
        raise ArchiveError(f"not a zip archive ({error})") from None
    with archive:
        prefix, members = _validate(archive, limits)
        created = missing_folders(destination.parent)
        try:
            staging = _staging_folder(destination)
        except BaseException:
            remove_empty_folders(created)
            raise
        try:
            root = staging.resolve()
            for member in members:
                relative = member.parts[len(prefix):]
                target = staging.joinpath(*relative)
                if not target.resolve().is_relative_to(root):  # belt and braces: parts are vetted
                    raise ArchiveError(f"member '{member.info.filename}' escapes the archive folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy_member(archive, member, target)
            os.rename(staging, destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            remove_empty_folders(created)
            raise
    return prefix, created


def extract_image_folder(zip_path: ZipSource, destination: Path,
                         limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Extract an uploaded image-folder zip into ``destination`` (which must not exist yet).

    Accepts ``<class>/<image>`` at the top of the archive or inside one top-level folder; only
    image files (by extension) directly inside class folders are extracted, ``__MACOSX/`` and
    dotfiles are ignored. Returns ``destination``, which then holds the class folders directly.
    Raises ArchiveError (nothing written) for anything unsafe or unusable, FileExistsError when
    ``destination`` already exists.
    """
    _extract(zip_path, Path(destination), limits)
    return Path(destination)


def _user_message(error: InvalidDataset, destination: Path, prefix: tuple[str, ...]) -> str:
    """The dataset error with server paths replaced by the member paths of the archive."""
    inside = "/".join(prefix)
    message = str(error)
    for root in {str(destination), str(destination.resolve())}:
        message = message.replace(root + os.sep, f"{inside}/" if inside else "")
        message = message.replace(root, inside or "the archive")
    return message


def _extract_and_read(zip_path: ZipSource, destination: Path, limits: ArchiveLimits,
                      read: Callable[[Path], T]) -> T:
    """Extract into ``destination`` and ``read`` the folder. An InvalidDataset from ``read`` (an
    image that does not decode, a class with too few images...) removes the extracted folder and
    is raised as ArchiveError with the same message, paths given as in the archive."""
    destination = Path(destination)
    prefix, created = _extract(zip_path, destination, limits)
    try:
        return read(destination)
    except InvalidDataset as error:
        message = _user_message(error, destination, prefix)
        shutil.rmtree(destination, ignore_errors=True)
        remove_empty_folders(created)
        raise ArchiveError(message) from error
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        remove_empty_folders(created)
        raise


def load_archive_dataset(zip_path: ZipSource, destination: Path, *, resolution: int,
                         seed: int = 0, holdout_size: int | float = 0.1,
                         validation_size: float = 0.2, grayscale: bool | None = None,
                         limits: ArchiveLimits = ArchiveLimits()) -> "DatasetSplits":
    """Extract the archive into ``destination`` and load it with ``load_image_folder``
    (ArchiveError, nothing left behind, if it cannot be used)."""
    # Local: the splits are torch tensors, and the checking process never loads them.
    from adaptation.netadapt.data import load_image_folder

    return _extract_and_read(zip_path, destination, limits, lambda folder: load_image_folder(
        folder, holdout_size=holdout_size, validation_size=validation_size, resolution=resolution,
        grayscale=grayscale, seed=seed, limits=limits.pixels))


def summarise_archive(zip_path: ZipSource, destination: Path, *, resolution: int,
                      seed: int = 0, holdout_size: int | float = 0.1,
                      validation_size: float = 0.2, grayscale: bool | None = None,
                      limits: ArchiveLimits = ArchiveLimits()) -> dict:
    """``load_archive_dataset(...).summary()`` without holding the dataset: extract, then decode
    the images one at a time (``summarise_image_folder``); needs neither torch nor more memory than
    one image. ArchiveError, nothing left behind, if the archive cannot be used."""
    return _extract_and_read(zip_path, destination, limits, lambda folder: summarise_image_folder(
        folder, resolution=resolution, grayscale=grayscale, limits=limits.pixels,
        holdout_size=holdout_size, validation_size=validation_size, seed=seed))
