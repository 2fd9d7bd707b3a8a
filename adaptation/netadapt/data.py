"""In-memory datasets for NetAdapt: train / holdout / validation splits as tensors.

NetAdapt needs three disjoint splits: ``train`` for training and short-term
fine-tuning, ``holdout`` (carved from the training data) on which it compares pruning
proposals, and ``validation`` for the accuracy it reports, which the algorithm never
sees while choosing. The datasets used here are small enough to hold in memory, so
splits are plain tensors and batches are produced by tensor indexing.

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
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from PIL.Image import Image as PilImage

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
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
#: Pillow modes with a single luminance band (plus optional alpha).
GRAYSCALE_MODES: frozenset[str] = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
#: Pillow modes whose values exceed 8 bits; converting them with Pillow would clip.
HIGH_DEPTH_MODES: frozenset[str] = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
#: A class needs one image in each of train, holdout and validation.
MIN_IMAGES_PER_CLASS = 3

_IDX_IMAGES_MAGIC = 2051  # idx3: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # idx1: unsigned bytes, 1 dimension


class DatasetUnavailable(RuntimeError):
    """A dataset that is normally installed on the machine is missing."""


class InvalidDataset(ValueError):
    """Dataset files or folders are malformed; the message names the file and the problem."""


@dataclass
class TensorSplit:
    """One split held in memory: normalised float32 images (N, C, H, W), int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


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


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a fraction strictly between 0 and 1, got {value!r}")


def _split_count(name: str, size: int | float, population: int) -> int:
    """Turn a split size (an int count, or a float fraction of ``population``) into a count."""
    if isinstance(size, bool):
        raise ValueError(f"{name} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, int):
        if not 1 <= size < population:
            raise ValueError(f"{name}={size} must be between 1 and {population - 1} (of {population} samples)")
        return size
    if isinstance(size, float):
        _check_fraction(name, size)
        return min(population - 1, max(1, round(size * population)))
    raise ValueError(f"{name} must be an int count or a float fraction, got {size!r}")


def _allocate_per_class(
    class_sizes: np.ndarray, total: int, minimum: np.ndarray, maximum: np.ndarray
) -> np.ndarray:
    """Split ``total`` among classes proportionally to ``class_sizes`` within [minimum, maximum].

    Largest-remainder rounding keeps each class's share as close to proportional as
    integers allow while the counts add up to ``total`` exactly (clamped to the bounds).
    """
    total = int(np.clip(total, minimum.sum(), maximum.sum()))
    exact = total * class_sizes / class_sizes.sum()
    counts = np.clip(np.floor(exact).astype(np.int64), minimum, maximum)
    # Priority of each class for the next +1 (or -1): its unrounded remainder, lowered
    # (raised) by one after each adjustment so the adjustments rotate between classes.
    priority = exact - np.floor(exact)
    while counts.sum() < total:
        candidates = np.flatnonzero(counts < maximum)
        chosen = candidates[np.argmax(priority[candidates])]
        counts[chosen] += 1
        priority[chosen] -= 1.0
    while counts.sum() > total:
        candidates = np.flatnonzero(counts > minimum)
        chosen = candidates[np.argmin(priority[candidates])]
        counts[chosen] -= 1
        priority[chosen] += 1.0
    return counts


def _stratified_take(
    indices: np.ndarray,
    labels: np.ndarray,
    count: int,
    rng: np.random.Generator,
    *,
    keep_per_class: int = 0,
    at_least_one_each: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``count`` of ``indices`` at random, stratified by ``labels[indices]``.

    Returns (taken, rest), both sorted. With ``at_least_one_each`` every class present
    gets at least one taken sample, and ``keep_per_class`` samples of each class always
    stay in ``rest`` (so later splits can be stratified too).
    """
    subset_labels = labels[indices]
    classes, class_sizes = np.unique(subset_labels, return_counts=True)
    minimum = np.full(len(classes), 1 if at_least_one_each else 0)
    maximum = np.maximum(class_sizes - keep_per_class, 0)
    minimum = np.minimum(minimum, maximum)
    per_class = _allocate_per_class(class_sizes, count, minimum, maximum)
    taken: list[np.ndarray] = []
    for label, class_count in zip(classes, per_class):
        members = indices[subset_labels == label]
        taken.append(rng.permutation(members)[:class_count])
    taken_indices = np.sort(np.concatenate(taken)) if taken else np.empty(0, dtype=np.int64)
    rest = np.setdiff1d(indices, taken_indices, assume_unique=True)
    return taken_indices, rest


def _resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear, antialiased resize of (N, C, H, W) images to resolution x resolution."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def _channel_statistics(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std; a constant channel gets std 1 to avoid dividing by zero."""
    as_double = images.double()
    mean = as_double.mean(dim=(0, 2, 3))
    std = as_double.std(dim=(0, 2, 3))
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

    ``splits`` maps "train"/"holdout"/"validation" to (float images in [0, 1], labels).
    """
    train_images = splits["train"][0]
    mean, std = _channel_statistics(train_images)
    tensor_splits = {
        split_name: TensorSplit(_normalise(images, mean, std), labels.to(torch.int64).contiguous())
        for split_name, (images, labels) in splits.items()
    }
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


def _three_way_split(
    labels: np.ndarray, holdout_size: int | float, validation_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (train, holdout, validation) indices.

    ``validation_size`` is a fraction of all samples; ``holdout_size`` a count or a
    fraction of what remains. Every class is represented in every split.
    """
    _check_fraction("validation_size", validation_size)
    rng = np.random.default_rng(seed)
    all_indices = np.arange(len(labels))
    validation_count = _split_count("validation_size", validation_size, len(labels))
    validation, rest = _stratified_take(all_indices, labels, validation_count, rng, keep_per_class=2)
    holdout_count = _split_count("holdout_size", holdout_size, len(rest))
    holdout, train = _stratified_take(rest, labels, holdout_count, rng, keep_per_class=1)
    return train, holdout, validation


def _cap_train_indices(train: np.ndarray, labels: np.ndarray, limit_train: int | None, seed: int) -> np.ndarray:
    """Keep a stratified, seed-chosen subset of at most ``limit_train`` train indices."""
    if limit_train is None or limit_train >= len(train):
        return train
    rng = np.random.default_rng([seed, limit_train])  # independent of the split draws
    kept, _ = _stratified_take(train, labels, limit_train, rng, at_least_one_each=False)
    return kept


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
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [0, 1]."""
    return torch.from_numpy(pixels.astype(np.float32) / 255.0).unsqueeze(1)


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
    holdout_count = _split_count("holdout_size", holdout_size, len(train_labels))
    holdout, train = _stratified_take(np.arange(len(train_labels)), train_labels, holdout_count, rng, keep_per_class=1)
    train = _cap_train_indices(train, train_labels, limit_train, seed)

    def split(pixels: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return _resize(_bytes_to_images(pixels), resolution), torch.from_numpy(labels.astype(np.int64))

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
    train, holdout, validation = _three_way_split(labels, holdout_size, validation_size, seed)
    train = _cap_train_indices(train, labels, limit_train, seed)
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


def _class_folders(root: Path) -> list[Path]:
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


def _image_files(folder: Path) -> list[Path]:
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


def _open_image(path: Path) -> PilImage:
    """Fully decode an image with Pillow; InvalidDataset naming the file if it cannot be."""
    from PIL import Image  # local: only image folders need Pillow

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise InvalidDataset(f"{path}: not a decodable image ({error})") from error


def _image_to_tensor(image: PilImage, grayscale: bool, resolution: int) -> torch.Tensor:
    """Pillow image -> float32 (C, resolution, resolution) in [0, 1]; 1 channel if grayscale else RGB."""
    if image.mode in HIGH_DEPTH_MODES:  # 16/32-bit or float luminance: scale by the format's range
        luminance = np.asarray(image, dtype=np.float32)
        luminance = luminance / (65535.0 if luminance.max(initial=0.0) > 255.0 else 255.0)
        array = luminance[None] if grayscale else np.repeat(luminance[None], 3, axis=0)
    elif grayscale:
        array = (np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[None]
    else:
        array = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    tensor = torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(0)
    return _resize(tensor, resolution).squeeze(0).clamp_(0.0, 1.0)


def load_image_folder(
    path: str | Path,
    *,
    holdout_size: int | float = 0.1,
    validation_size: float = 0.2,
    resolution: int = 32,
    grayscale: bool | None = None,
    seed: int = 0,
) -> DatasetSplits:
    """Load ``path/<class>/*.{png,jpg,jpeg,bmp,gif,webp}`` as stratified, normalised splits.

    Classes are the sub-folder names, sorted. Images are resized to resolution x
    resolution. ``grayscale=None`` picks 1 channel when every image has a luminance-only
    Pillow mode (1, L, LA, I, I;16, F), else 3 (RGB); True/False force it. Validation
    is ``validation_size`` of all images, holdout ``holdout_size`` (count or fraction)
    of the rest, and every class is in every split, so a class needs at least 3
    images. Raises InvalidDataset (naming the folder or file) for a missing folder,
    fewer than 2 classes, a class without enough images, or an undecodable image.
    """
    _check_resolution(resolution)
    root = Path(path)
    folders = _class_folders(root)
    files_per_class = [_image_files(folder) for folder in folders]

    decoded: list[tuple[PilImage, int]] = []
    for label, files in enumerate(files_per_class):
        decoded.extend((_open_image(file), label) for file in files)
    if grayscale is None:
        grayscale = all(image.mode in GRAYSCALE_MODES for image, _ in decoded)

    images = torch.stack([_image_to_tensor(image, grayscale, resolution) for image, _ in decoded])
    labels = np.array([label for _, label in decoded], dtype=np.int64)
    train, holdout, validation = _three_way_split(labels, holdout_size, validation_size, seed)
    label_tensor = torch.from_numpy(labels)
    return _assemble(
        root.name or str(root),
        {
            "train": (images[train], label_tensor[train]),
            "holdout": (images[holdout], label_tensor[holdout]),
            "validation": (images[validation], label_tensor[validation]),
        },
        [folder.name for folder in folders],
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
            yield split.images[batch_indices], split.labels[batch_indices]
    else:
        for start in range(0, count, batch_size):
            yield split.images[start : start + batch_size], split.labels[start : start + batch_size]
