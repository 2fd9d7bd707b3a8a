"""In-memory datasets for NetAdapt: train / holdout / validation splits as tensors.

NetAdapt needs three disjoint splits: ``train`` for training and short-term
fine-tuning, ``holdout`` (carved from the training data) on which it compares pruning
proposals, and ``validation`` for the accuracy it reports, which the algorithm never
sees while choosing. The datasets used here are small enough to hold in memory, so
splits are plain tensors and batches are produced by tensor indexing. Fashion-MNIST and
image folders are held as uint8 pixels (a quarter of float32) and normalised one batch
at a time (``TensorSplit.batch``); image folders are decoded within pixel bounds, one
image at a time (``image_folder``).

Sources: Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (gzip'd idx
files, parsed here), scikit-learn's bundled 8x8 digits, and image folders
(``root/<class>/<image>``). Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .image_folder import (GRAYSCALE_MODES, HIGH_DEPTH_MODES, IMAGE_EXTENSIONS,  # noqa: F401 (re-exported)
                           MIN_IMAGES_PER_CLASS, InvalidDataset, PixelLimits, decoded_images,
                           scan_image_folder)
from .splits import cap_train_indices, split_count, stratified_take, three_way_split

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable that overrides ``FASHION_MNIST_DIR``.
FASHION_MNIST_DIR_ENV = "NETADAPT_FASHION_MNIST_DIR"
FASHION_MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_RESOLUTION = 28
DIGITS_RESOLUTION = 8
DIGITS_MAX_VALUE = 16.0

BUILTIN_DATASETS: tuple[str, ...] = ("fashion_mnist", "digits")
#: Values converted to float at a time when statistics or resizing walk a whole split (32 MB
#: as float64): a whole 224 px split converted at once would be gigabytes.
CHUNK_VALUES = 1 << 22


def _chunks(images: torch.Tensor) -> Iterator[slice]:
    """Slices of ``images`` (N, ...) holding about ``CHUNK_VALUES`` values each."""
    step = max(1, CHUNK_VALUES // max(1, images[0].numel() if len(images) else 1))
    for start in range(0, len(images), step):
        yield slice(start, start + step)

_IDX_IMAGES_MAGIC = 2051  # idx3: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # idx1: unsigned bytes, 1 dimension


class DatasetUnavailable(RuntimeError):
    """A dataset that is normally installed on the machine is missing."""


@dataclass
class TensorSplit:
    """One split held in memory: images (N, C, H, W) and int64 labels (N,).

    Images are either normalised float32, or uint8 pixels with the per-channel ``mean`` and
    ``std`` (of pixels / 255) that normalise them; ``batch`` returns normalised float32 either way.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )
        if self.images.dtype == torch.uint8:
            channels = self.images.shape[1]
            if self.mean is None or self.std is None or len(self.mean) != channels or len(self.std) != channels:
                raise ValueError(f"uint8 images need a mean and a std for each of their {channels} channel(s)")
            self._mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            self._std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        elif not self.images.is_floating_point():
            raise ValueError(f"images must be float or uint8, got {self.images.dtype}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The images at ``index`` as normalised float32 (N, C, H, W)."""
        images = self.images[index]
        if images.dtype != torch.uint8:
            return images
        return (images.to(torch.float32).div_(255.0).sub_(self._mean)).div_(self._std)

    def subset(self, index: torch.Tensor | np.ndarray) -> "TensorSplit":
        """The samples at ``index`` as a split of their own (same storage and normalisation)."""
        index = torch.as_tensor(index)
        return TensorSplit(self.images[index], self.labels[index], self.mean, self.std)


@dataclass
class DatasetSplits:
    """The three disjoint splits of a dataset plus what a model needs to know about it."""

    name: str
    train: TensorSplit
    holdout: TensorSplit
    validation: TensorSplit
    num_classes: int
    in_channels: int
    resolution: int
    class_names: list[str]
    mean: list[float]
    std: list[float]

    def summary(self) -> dict:
        """JSON-friendly description: split sizes, per-class counts, input shape."""
        splits = {"train": self.train, "holdout": self.holdout, "validation": self.validation}
        class_counts = {}
        for split_name, split in splits.items():
            counts = torch.bincount(split.labels, minlength=self.num_classes).tolist()
            class_counts[split_name] = dict(zip(self.class_names, counts))
        return {
            "name": self.name,
            "sizes": {split_name: len(split) for split_name, split in splits.items()},
            "class_counts": class_counts,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "resolution": self.resolution,
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
        }


# --------------------------------------------------------------------------- helpers


def _check_resolution(resolution: int | None) -> None:
    if resolution is None:
        return
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be an integer >= 1, got {resolution!r}")


def _resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear, antialiased resize of (N, C, H, W) images to resolution x resolution."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def _resize_uint8(pixels: torch.Tensor, resolution: int) -> torch.Tensor:
    """``_resize`` of uint8 (N, C, H, W) pixels, a chunk at a time, rounded back to uint8."""
    if pixels.shape[-2:] == (resolution, resolution):
        return pixels
    out = torch.empty((*pixels.shape[:2], resolution, resolution), dtype=torch.uint8)
    for chunk in _chunks(out if out[0].numel() >= pixels[0].numel() else pixels):  # the larger
        resized = _resize(pixels[chunk].to(torch.float32), resolution)
        out[chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _channel_statistics(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (of pixels / 255 for uint8 images), a chunk of images at a time;
    a constant channel gets std 1 to avoid dividing by zero."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for part in _chunks(images):
        chunk = images[part].double()
        if images.dtype == torch.uint8:
            chunk /= 255.0
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = images.numel() // channels
    mean = total / count
    std = ((squares - count * mean.square()) / max(count - 1, 1)).clamp_(min=0.0).sqrt_()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


def _normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_tensor = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_tensor = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((images - mean_tensor) / std_tensor).contiguous()


def _assemble(
    name: str,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    class_names: list[str],
) -> DatasetSplits:
    """Normalise every split with the train split's statistics and wrap the result.

    ``splits`` maps "train"/"holdout"/"validation" to (images, labels): float images in [0, 1]
    are normalised here; uint8 pixels stay uint8 and are normalised batch by batch.
    """
    train_images = splits["train"][0]
    mean, std = _channel_statistics(train_images)

    def split(images: torch.Tensor, labels: torch.Tensor) -> TensorSplit:
        labels = labels.to(torch.int64).contiguous()
        if images.dtype == torch.uint8:
            return TensorSplit(images.contiguous(), labels, tuple(mean), tuple(std))
        return TensorSplit(_normalise(images, mean, std), labels)

    tensor_splits = {split_name: split(images, labels) for split_name, (images, labels) in splits.items()}
    return DatasetSplits(
        name=name,
        train=tensor_splits["train"],
        holdout=tensor_splits["holdout"],
        validation=tensor_splits["validation"],
        num_classes=len(class_names),
        in_channels=int(train_images.shape[1]),
        resolution=int(train_images.shape[-1]),
        class_names=class_names,
        mean=mean,
        std=std,
    )


# --------------------------------------------------------------------------- Fashion-MNIST


def fashion_mnist_dir() -> Path:
    """Where Fashion-MNIST is read from: $NETADAPT_FASHION_MNIST_DIR, else FASHION_MNIST_DIR."""
    override = os.environ.get(FASHION_MNIST_DIR_ENV)
    return Path(override) if override else FASHION_MNIST_DIR


def fashion_mnist_available() -> bool:
    """True when all four Fashion-MNIST idx files are present."""
    directory = fashion_mnist_dir()
    return all((directory / file_name).is_file() for file_name in FASHION_MNIST_FILES.values())


def _read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise InvalidDataset(f"{path}: not a readable gzip file ({error})") from error


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse a gzip'd idx file of unsigned bytes, validating magic number and size."""
    payload = _read_gzip(path)
    dimensions = 3 if expected_magic == _IDX_IMAGES_MAGIC else 1
    header_size = 4 * (1 + dimensions)
    if len(payload) < header_size:
        raise InvalidDataset(f"{path}: truncated idx header ({len(payload)} bytes)")
    magic, *shape = struct.unpack(f">{1 + dimensions}i", payload[:header_size])
    if magic != expected_magic:
        raise InvalidDataset(f"{path}: bad idx magic number {magic} (expected {expected_magic})")
    if any(size <= 0 for size in shape):
        raise InvalidDataset(f"{path}: invalid idx dimensions {shape}")
    expected_bytes = header_size + int(np.prod(shape))
    if len(payload) != expected_bytes:
        raise InvalidDataset(f"{path}: size {len(payload)} bytes does not match dimensions {shape} ({expected_bytes} bytes)")
    return np.frombuffer(payload, dtype=np.uint8, offset=header_size).reshape(shape)


def _read_fashion_mnist_pair(directory: Path, images_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of one official split, cross-checked."""
    images_path = directory / FASHION_MNIST_FILES[images_key]
    labels_path = directory / FASHION_MNIST_FILES[labels_key]
    images = _read_idx(images_path, _IDX_IMAGES_MAGIC)
    labels = _read_idx(labels_path, _IDX_LABELS_MAGIC)
    if images.shape[1:] != (FASHION_MNIST_RESOLUTION, FASHION_MNIST_RESOLUTION):
        raise InvalidDataset(f"{images_path}: images are {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise InvalidDataset(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if labels.max() >= len(FASHION_MNIST_CLASSES):
        raise InvalidDataset(f"{labels_path}: label {int(labels.max())} outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
    return images, labels


def _bytes_to_images(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) -> uint8 (N, 1, H, W), a copy of its own."""
    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).unsqueeze(1)  # idx arrays are read-only


def _load_fashion_mnist(holdout_size: int | float, resolution: int, seed: int, limit_train: int | None) -> DatasetSplits:
    """Fashion-MNIST: holdout carved from the 60k training images; validation = t10k."""
    directory = fashion_mnist_dir()
    missing = [name for name in FASHION_MNIST_FILES.values() if not (directory / name).is_file()]
    if missing:
        raise DatasetUnavailable(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}): install the Debian "
            f"package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
            f"or set {FASHION_MNIST_DIR_ENV} to a folder holding the idx files"
        )
    train_pixels, train_labels = _read_fashion_mnist_pair(directory, "train_images", "train_labels")
    test_pixels, test_labels = _read_fashion_mnist_pair(directory, "test_images", "test_labels")

    rng = np.random.default_rng(seed)
    holdout_count = split_count("holdout_size", holdout_size, len(train_labels))
    holdout, train = stratified_take(np.arange(len(train_labels)), train_labels, holdout_count, rng, keep_per_class=1)
    train = cap_train_indices(train, train_labels, limit_train, seed)

    def split(pixels: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return _resize_uint8(_bytes_to_images(pixels), resolution), torch.from_numpy(labels.astype(np.int64))

    return _assemble(
        "fashion_mnist",
        {
            "train": split(train_pixels[train], train_labels[train]),
            "holdout": split(train_pixels[holdout], train_labels[holdout]),
            "validation": split(test_pixels, test_labels),
        },
        list(FASHION_MNIST_CLASSES),
    )


# --------------------------------------------------------------------------- digits


def _load_digits(
    holdout_size: int | float, validation_size: float, resolution: int, seed: int, limit_train: int | None
) -> DatasetSplits:
    """scikit-learn's bundled 8x8 digits (1797 images, values 0..16), stratified split."""
    from sklearn.datasets import load_digits  # local: only this loader needs scikit-learn

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / DIGITS_MAX_VALUE).unsqueeze(1)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images = _resize(images, resolution)
    train, holdout, validation = three_way_split(labels, holdout_size, validation_size, seed)
    train = cap_train_indices(train, labels, limit_train, seed)
    label_tensor = torch.from_numpy(labels)
    return _assemble(
        "digits",
        {
            "train": (images[train], label_tensor[train]),
            "holdout": (images[holdout], label_tensor[holdout]),
            "validation": (images[validation], label_tensor[validation]),
        },
        [str(digit) for digit in range(10)],
    )


def load_dataset(
    name: str,
    *,
    holdout_size: int | float = 0.1,
    validation_size: float = 0.2,
    resolution: int | None = None,
    seed: int = 0,
    limit_train: int | None = None,
) -> DatasetSplits:
    """Load a built-in dataset (see BUILTIN_DATASETS) as normalised, disjoint splits.

    ``holdout_size`` is a sample count (int) or a fraction (float). ``resolution``
    defaults to the native size (28 for Fashion-MNIST, 8 for digits); other values
    resize bilinearly with antialiasing. ``limit_train`` caps the train split (chosen
    by ``seed`` after the holdout is carved) for quick runs. Splits depend only on
    ``seed``.

    - ``fashion_mnist``: holdout is carved from the 60k training images (a fraction
      means a fraction of those 60k); validation is the official 10k t10k test set, so
      ``validation_size`` is ignored. Raises DatasetUnavailable when the files are
      missing and InvalidDataset when one is corrupt.
    - ``digits``: validation is ``validation_size`` of all 1797 images, holdout is
      ``holdout_size`` of the rest; stratified so every class is in every split.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in BUILTIN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; built-in datasets: {', '.join(BUILTIN_DATASETS)}")
    _check_resolution(resolution)
    if limit_train is not None and (isinstance(limit_train, bool) or not isinstance(limit_train, int) or limit_train < 1):
        raise ValueError(f"limit_train must be None or an integer >= 1, got {limit_train!r}")

    if key == "fashion_mnist":
        return _load_fashion_mnist(holdout_size, resolution or FASHION_MNIST_RESOLUTION, seed, limit_train)
    return _load_digits(holdout_size, validation_size, resolution or DIGITS_RESOLUTION, seed, limit_train)


# --------------------------------------------------------------------------- image folders


def load_image_folder(
    path: str | Path,
    *,
    holdout_size: int | float = 0.1,
    validation_size: float = 0.2,
    resolution: int = 32,
    grayscale: bool | None = None,
    seed: int = 0,
    limits: PixelLimits = PixelLimits(),
) -> DatasetSplits:
    """Load ``path/<class>/*.{png,jpg,jpeg,bmp,gif,webp}`` as stratified splits of uint8 images.

    Classes are the sub-folder names, sorted. Every image's header is checked against
    ``limits`` before any is decoded; then each is decoded, turned upright (EXIF) and
    resized to resolution x resolution on its own (``image_folder``). ``grayscale=None``
    picks 1 channel when every image has a luminance-only Pillow mode (1, L, LA, I,
    I;16, F), else 3 (RGB); True/False force it. Validation is ``validation_size`` of all
    images, holdout ``holdout_size`` (count or fraction) of the rest, and every class is
    in every split, so a class needs at least 3 images. Raises InvalidDataset (naming the
    folder or file) for a missing folder, fewer than 2 classes, a class without enough
    images, an image over the pixel limits, an animated or undecodable image.
    """
    _check_resolution(resolution)
    root = Path(path)
    scan = scan_image_folder(root, limits)
    if grayscale is None:
        grayscale = scan.all_grayscale()
    channels = 1 if grayscale else 3
    images = torch.empty((len(scan.headers), channels, resolution, resolution), dtype=torch.uint8)
    for index, pixels in enumerate(decoded_images(scan, grayscale, resolution)):
        images[index] = torch.from_numpy(pixels)
    train, holdout, validation = three_way_split(scan.labels, holdout_size, validation_size, seed)
    label_tensor = torch.from_numpy(scan.labels)
    return _assemble(
        root.name or str(root),
        {
            "train": (images[train], label_tensor[train]),
            "holdout": (images[holdout], label_tensor[holdout]),
            "validation": (images[validation], label_tensor[validation]),
        },
        list(scan.class_names),
    )


# --------------------------------------------------------------------------- batching


def iterate_batches(
    split: TensorSplit,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) batches covering the split once; the last may be smaller.

    Plain tensor indexing: for in-memory data this is much faster than a DataLoader.
    With ``shuffle`` the order comes from ``generator`` (the global RNG if None).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    count = len(split)
    if shuffle:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, batch_size):
            batch_indices = order[start : start + batch_size]
            yield split.batch(batch_indices), split.labels[batch_indices]
    else:
        for start in range(0, count, batch_size):
            yield split.batch(slice(start, start + batch_size)), split.labels[start : start + batch_size]
