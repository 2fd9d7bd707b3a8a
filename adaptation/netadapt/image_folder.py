"""Image folders (``root/<class>/<image>``) read within bounds: headers first, then one image at a time.

Images may come from an untrusted upload, so what they decode to is bounded before a pixel is
decoded: every image's header (Pillow's lazy ``Image.open``: size, mode and frame count, no pixel
data) is read first; one image above ``PixelLimits.max_image_pixels``, or a folder whose images
add up to more than ``PixelLimits.max_total_pixels``, is refused naming the file. Then each image
is decoded, turned upright (EXIF orientation), converted and resized to the dataset's resolution
on its own, and kept as uint8: memory is one source image plus the resized uint8 images, never a
float32 copy of the whole folder.

Pure: Pillow and numpy, no torch (the upload check runs it in a small child process).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .splits import three_way_split

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
#: The only decoders Pillow may pick, whatever a file's content looks like: by content Pillow would
#: also open EPS (which it renders by running Ghostscript), PSD, TIFF and dozens of others.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
#: Pillow modes with a single luminance band (plus optional alpha).
GRAYSCALE_MODES: frozenset[str] = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
#: Pillow modes whose values exceed 8 bits; converting them with Pillow would clip.
HIGH_DEPTH_MODES: frozenset[str] = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
#: The EXIF tag saying how a photo must be turned to be upright (1: as stored).
ORIENTATION = 0x0112
#: A class needs one image in each of train, holdout and validation.
MIN_IMAGES_PER_CLASS = 3
#: Default pixel limits (see ``PixelLimits``).
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
DEFAULT_MAX_TOTAL_PIXELS = 1_000_000_000


class InvalidDataset(ValueError):
    """Dataset files or folders are malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class PixelLimits:
    """What the images of one dataset may decode to, counted from their headers (width x height).

    25 megapixels is a 5000x5000 image (a phone photo is 12); a 1-bit PNG of that size is a few
    kilobytes compressed but decodes to at least 25 MB, and RGB conversions to ~200 MB at peak.
    """

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_total_pixels: int = DEFAULT_MAX_TOTAL_PIXELS


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself before it is decoded."""

    path: Path
    width: int
    height: int
    mode: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class FolderScan:
    """The images of a folder (headers checked against the limits), with their labels."""

    class_names: list[str]
    headers: list[ImageHeader]
    labels: np.ndarray  # int64 (N,)

    def all_grayscale(self) -> bool:
        """True when every image has a luminance-only mode (then 1 channel is enough)."""
        return all(header.mode in GRAYSCALE_MODES for header in self.headers)


def _format_pixels(count: int) -> str:
    return f"{count:,} pixels"


def class_folders(root: Path) -> list[Path]:
    """Class sub-folders of ``root`` sorted by name (hidden folders ignored), validated."""
    if not root.is_dir():
        raise InvalidDataset(f"{root}: dataset folder does not exist or is not a directory")
    folders = sorted(
        (entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
        key=lambda entry: entry.name,
    )
    if len(folders) < 2:
        raise InvalidDataset(
            f"{root}: found {len(folders)} class folder(s), need at least 2 (layout: {root}/<class>/<image>)"
        )
    return folders


def image_files(folder: Path) -> list[Path]:
    """Image files of one class folder, sorted; raises if there are too few."""
    files = sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise InvalidDataset(
            f"{folder}: class folder has no images (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    if len(files) < MIN_IMAGES_PER_CLASS:
        raise InvalidDataset(
            f"{folder}: class has {len(files)} image(s), need at least {MIN_IMAGES_PER_CLASS} "
            "(one each for train, holdout and validation)"
        )
    return files


def _open(path: Path) -> Image.Image:
    """Pillow's lazy open (header only). Its own bomb check is kept, but as our error: our
    per-image limit is lower than its threshold, so it only fires for absurd sizes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides
        try:
            return Image.open(path, formats=IMAGE_FORMATS)
        except UnidentifiedImageError:
            raise InvalidDataset(f"{path}: not a decodable image (not PNG, JPEG, BMP, GIF or WebP)") from None
        except Image.DecompressionBombError as error:
            raise InvalidDataset(f"{path}: the image is too large to decode ({error})") from None
        except MemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure of a decoder on untrusted bytes
            raise InvalidDataset(f"{path}: not a decodable image ({error})") from None


def read_header(path: Path, limits: PixelLimits) -> ImageHeader:
    """Size and mode of an image without decoding it; InvalidDataset (naming the file) if it is
    not an image, is animated, or declares more pixels than ``limits.max_image_pixels``."""
    with _open(path) as image:
        width, height = image.size
        # Counts frame headers, decodes no pixels. A camera's multi-picture JPEG (MPO: the photo
        # plus previews or a depth map) is not animated: its first picture is the photo.
        frames = 1 if image.format == "MPO" else getattr(image, "n_frames", 1)
        header = ImageHeader(path, int(width), int(height), image.mode)
    if header.width < 1 or header.height < 1:
        raise InvalidDataset(f"{path}: the image is {width}x{height} pixels")
    if header.pixels > limits.max_image_pixels:
        raise InvalidDataset(
            f"{path}: the image is {width}x{height} ({_format_pixels(header.pixels)}); at most "
            f"{_format_pixels(limits.max_image_pixels)} per image")
    if frames != 1:
        raise InvalidDataset(f"{path}: the image is animated ({frames} frames); use still images")
    return header


def scan_image_folder(root: Path, limits: PixelLimits) -> FolderScan:
    """Every image's header, checked against ``limits`` before anything is decoded."""
    folders = class_folders(root)
    files_per_class = [image_files(folder) for folder in folders]
    headers: list[ImageHeader] = []
    labels: list[int] = []
    total = 0
    for label, files in enumerate(files_per_class):
        for path in files:
            header = read_header(path, limits)
            total += header.pixels
            if total > limits.max_total_pixels:
                raise InvalidDataset(
                    f"{path}: the images add up to more than {_format_pixels(limits.max_total_pixels)} "
                    "(the limit for a whole dataset) at this file")
            headers.append(header)
            labels.append(label)
    return FolderScan([folder.name for folder in folders], headers, np.array(labels, dtype=np.int64))


def _to_uint8(image: Image.Image, grayscale: bool, resolution: int) -> np.ndarray:
    """A decoded Pillow image -> uint8 (C, resolution, resolution), 1 channel if grayscale else RGB."""
    size = (resolution, resolution)
    resample = Image.Resampling.BILINEAR  # antialiased when shrinking, like torch's antialias=True
    if image.mode in HIGH_DEPTH_MODES:  # 16/32-bit or float luminance: scale by the format's range
        luminance = np.array(image, dtype=np.float32)  # a copy of its own, scaled in place
        luminance *= 255.0 / (65535.0 if luminance.max(initial=0.0) > 255.0 else 255.0)
        resized = Image.fromarray(luminance, mode="F").resize(size, resample)
        channel = np.clip(np.rint(np.asarray(resized)), 0, 255).astype(np.uint8)
        return channel[None] if grayscale else np.repeat(channel[None], 3, axis=0)
    if grayscale:
        return np.asarray(image.convert("L").resize(size, resample), dtype=np.uint8)[None]
    return np.asarray(image.convert("RGB").resize(size, resample), dtype=np.uint8).transpose(2, 0, 1)


def decode_image(header: ImageHeader, grayscale: bool, resolution: int) -> np.ndarray:
    """One image, upright and resized: uint8 (C, resolution, resolution); InvalidDataset naming the
    file if it does not decode (truncated, corrupt, not what its header says)."""
    path = header.path
    with _open(path) as image:
        try:
            if image.size != (header.width, header.height) or image.mode != header.mode:
                raise InvalidDataset(f"{path}: the image changed while it was being read")
            if image.format == "JPEG":
                image.draft("RGB" if not grayscale else "L", (resolution, resolution))  # DCT scaling
            image.load()
            # exif_transpose copies even an upright image: only call it for a rotated one
            rotated = image.getexif().get(ORIENTATION, 1) not in (1, None)
            upright = ImageOps.exif_transpose(image) if rotated else image
            return np.array(_to_uint8(upright, grayscale, resolution), dtype=np.uint8, order="C")  # writable
        except (InvalidDataset, MemoryError):
            raise
        except Exception as error:  # noqa: BLE001 - any failure of a decoder on untrusted bytes
            raise InvalidDataset(f"{path}: not a decodable image ({error})") from None


def decoded_images(scan: FolderScan, grayscale: bool, resolution: int) -> Iterator[np.ndarray]:
    """The scanned images decoded one at a time (see ``decode_image``)."""
    for header in scan.headers:
        yield decode_image(header, grayscale, resolution)


def summarise_image_folder(root: Path, *, resolution: int, grayscale: bool | None = None,
                           limits: PixelLimits = PixelLimits(), holdout_size: int | float = 0.1,
                           validation_size: float = 0.2, seed: int = 0) -> dict:
    """Decode every image of ``root`` within ``limits`` and describe the dataset the way
    ``DatasetSplits.summary()`` does (split sizes, class counts, channels, resolution, the train
    split's per-channel mean and std), holding one decoded image at a time.

    The splits are those ``data.load_image_folder`` draws with the same arguments.
    """
    scan = scan_image_folder(root, limits)
    if grayscale is None:
        grayscale = scan.all_grayscale()
    channels = 1 if grayscale else 3
    sums = np.zeros((len(scan.headers), channels))
    squares = np.zeros((len(scan.headers), channels))
    for index, pixels in enumerate(decoded_images(scan, grayscale, resolution)):
        values = pixels.reshape(channels, -1).astype(np.float64) / 255.0
        sums[index] = values.sum(axis=1)
        squares[index] = np.square(values).sum(axis=1)
    train, holdout, validation = three_way_split(scan.labels, holdout_size, validation_size, seed)
    count = len(train) * resolution * resolution
    mean = sums[train].sum(axis=0) / count
    variance = (squares[train].sum(axis=0) - count * np.square(mean)) / max(count - 1, 1)
    std = np.sqrt(np.maximum(variance, 0.0))
    std = np.where(std > 1e-8, std, 1.0)
    splits = {"train": train, "holdout": holdout, "validation": validation}
    num_classes = len(scan.class_names)
    class_counts = {
        name: dict(zip(scan.class_names, np.bincount(scan.labels[indices], minlength=num_classes).tolist()))
        for name, indices in splits.items()}
    return {
        "name": root.name or str(root),
        "sizes": {name: int(len(indices)) for name, indices in splits.items()},
        "class_counts": class_counts,
        "num_classes": num_classes,
        "in_channels": channels,
        "resolution": resolution,
        "class_names": list(scan.class_names),
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
