"""Tests for adaptation.netadapt.data: splits, normalisation, image folders, Fashion-MNIST idx parsing."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adaptation.netadapt.data import (
    BUILTIN_DATASETS,
    FASHION_MNIST_DIR_ENV,
    DatasetSplits,
    DatasetUnavailable,
    InvalidDataset,
    TensorSplit,
    fashion_mnist_available,
    iterate_batches,
    load_dataset,
    load_image_folder,
)

DIGITS_TOTAL = 1797


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits", seed=0)


def _row_set(split: TensorSplit) -> set[bytes]:
    """Each image as raw bytes, to compare splits sample by sample."""
    return {row.numpy().tobytes() for row in split.images.reshape(len(split), -1)}


def test_digits_sizes_add_up(digits: DatasetSplits) -> None:
    assert len(digits.train) + len(digits.holdout) + len(digits.validation) == DIGITS_TOTAL
    assert len(digits.validation) == round(0.2 * DIGITS_TOTAL)
    assert digits.num_classes == 10 and digits.in_channels == 1 and digits.resolution == 8
    assert digits.train.images.shape[1:] == (1, 8, 8)
    assert digits.train.images.dtype == torch.float32 and digits.train.labels.dtype == torch.int64


def _raw_digit_rows(split: TensorSplit, splits: DatasetSplits) -> set[bytes]:
    """Undo normalisation and recover each image's original 0..16 pixel values as bytes."""
    raw = split.images * splits.std[0] + splits.mean[0]
    pixels = torch.round(raw * 16).to(torch.uint8).reshape(len(split), -1)
    return {row.numpy().tobytes() for row in pixels}


def test_digits_splits_are_disjoint_and_cover_the_dataset(digits: DatasetSplits) -> None:
    from sklearn.datasets import load_digits

    source_rows = {row.tobytes() for row in load_digits().data.astype(np.uint8)}
    assert len(source_rows) == DIGITS_TOTAL  # sklearn's digits have no duplicate images
    train, holdout, validation = (
        _raw_digit_rows(split, digits) for split in (digits.train, digits.holdout, digits.validation)
    )
    assert len(train) == len(digits.train) and len(holdout) == len(digits.holdout)
    assert not train & holdout and not train & validation and not holdout & validation
    assert train | holdout | validation == source_rows


def test_digits_split_is_deterministic_and_seed_dependent(digits: DatasetSplits) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(digits.train.images, again.train.images)
    assert torch.equal(digits.holdout.labels, again.holdout.labels)
    assert torch.equal(digits.validation.images, again.validation.images)
    assert len(other.validation) == len(digits.validation)
    assert not torch.equal(digits.validation.images, other.validation.images)


def test_digits_split_is_stratified(digits: DatasetSplits) -> None:
    for split in (digits.train, digits.holdout, digits.validation):
        counts = torch.bincount(split.labels, minlength=10)
        assert (counts > 0).all()
    summary = digits.summary()
    assert summary["sizes"] == {
        "train": len(digits.train),
        "holdout": len(digits.holdout),
        "validation": len(digits.validation),
    }
    assert sum(summary["class_counts"]["validation"].values()) == len(digits.validation)
    assert summary["num_classes"] == 10 and summary["in_channels"] == 1 and summary["resolution"] == 8


def test_digits_train_is_normalised(digits: DatasetSplits) -> None:
    assert abs(digits.train.images.mean().item()) < 1e-4
    assert abs(digits.train.images.std().item() - 1.0) < 1e-3
    assert len(digits.mean) == len(digits.std) == 1


def test_holdout_size_as_count_and_limit_train() -> None:
    splits = load_dataset("digits", holdout_size=100, limit_train=300, seed=3)
    assert len(splits.holdout) == 100
    assert len(splits.train) == 300


def test_resolution_resizes() -> None:
    splits = load_dataset("digits", resolution=16)
    assert splits.train.images.shape[1:] == (1, 16, 16)
    assert splits.resolution == 16


def test_unknown_dataset_lists_builtin_names() -> None:
    with pytest.raises(ValueError) as error:
        load_dataset("cifar10")
    for name in BUILTIN_DATASETS:
        assert name in str(error.value)


def test_iterate_batches_covers_every_sample_once(digits: DatasetSplits) -> None:
    generator = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(digits.holdout, 32, shuffle=True, generator=generator))
    assert all(len(images) == len(labels) for images, labels in batches)
    assert [len(labels) for _, labels in batches[:-1]] == [32] * (len(batches) - 1)
    assert len(batches) == -(-len(digits.holdout) // 32)
    seen = torch.cat([images for images, _ in batches])
    assert len(seen) == len(digits.holdout)
    assert _row_set(TensorSplit(seen, torch.cat([labels for _, labels in batches]))) == _row_set(digits.holdout)
    ordered = torch.cat([labels for _, labels in iterate_batches(digits.holdout, 50, shuffle=False)])
    assert torch.equal(ordered, digits.holdout.labels)


# --------------------------------------------------------------------------- image folders

CLASS_NAMES = ["cat", "dog", "emu"]


def _make_folder(root: Path, mode: str, images_per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for class_name in CLASS_NAMES:
        (root / class_name).mkdir(parents=True)
        for index in range(images_per_class):
            shape = (12, 10, 3) if mode == "RGB" else (12, 10)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels, mode=mode).save(root / class_name / f"{index}.png")
    return root


@pytest.mark.parametrize(("mode", "channels"), [("RGB", 3), ("L", 1)])
def test_image_folder_loads(tmp_path: Path, mode: str, channels: int) -> None:
    root = _make_folder(tmp_path / "pets", mode)
    splits = load_image_folder(root, resolution=16, seed=0)
    assert splits.num_classes == 3
    assert splits.class_names == CLASS_NAMES
    assert splits.in_channels == channels
    assert splits.train.images.shape[1:] == (channels, 16, 16)
    assert len(splits.train) + len(splits.holdout) + len(splits.validation) == 18
    for split in (splits.train, splits.holdout, splits.validation):
        assert set(split.labels.tolist()) == {0, 1, 2}
    assert len(splits.mean) == channels


def test_image_folder_grayscale_can_be_forced(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "pets", "RGB")
    assert load_image_folder(root, resolution=8, grayscale=True).in_channels == 1


def test_image_folder_rejects_undecodable_image(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "pets", "RGB")
    broken = root / "dog" / "broken.png"
    broken.write_text("this is not an image")
    with pytest.raises(InvalidDataset, match="broken.png"):
        load_image_folder(root)


def test_image_folder_rejects_single_class(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "pets", "RGB")
    for class_name in CLASS_NAMES[1:]:
        for file in (root / class_name).iterdir():
            file.unlink()
        (root / class_name).rmdir()
    with pytest.raises(InvalidDataset, match="class"):
        load_image_folder(root)


def test_image_folder_rejects_missing_dir_and_empty_class(tmp_path: Path) -> None:
    with pytest.raises(InvalidDataset, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    root = _make_folder(tmp_path / "pets", "RGB")
    (root / "zebra").mkdir()
    with pytest.raises(InvalidDataset, match="zebra"):
        load_image_folder(root)


def test_image_folder_rejects_class_too_small_to_split(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "pets", "RGB", images_per_class=2)
    with pytest.raises(InvalidDataset, match="at least"):
        load_image_folder(root)


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(not fashion_mnist_available(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_loads() -> None:
    splits = load_dataset("fashion_mnist", holdout_size=2000, limit_train=5000, seed=0)
    assert splits.train.images.shape == (5000, 1, 28, 28)
    assert len(splits.holdout) == 2000
    assert len(splits.validation) == 10000
    assert splits.num_classes == 10 and len(splits.class_names) == 10
    for split in (splits.train, splits.holdout, splits.validation):
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) <= 9
    assert splits.train.images.dtype == torch.uint8  # a quarter of float32; normalised per batch
    normalised = torch.cat([images for images, _ in iterate_batches(splits.train, 1000, shuffle=False)])
    assert normalised.dtype == torch.float32 and abs(normalised.mean().item()) < 1e-3


def test_fashion_mnist_missing_names_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))
    assert not fashion_mnist_available()
    with pytest.raises(DatasetUnavailable, match="dataset-fashion-mnist"):
        load_dataset("fashion_mnist")


def _write_idx(path: Path, magic: int, shape: tuple[int, ...], payload: bytes) -> None:
    with gzip.open(path, "wb") as stream:
        stream.write(struct.pack(f">{1 + len(shape)}i", magic, *shape) + payload)


def _write_tiny_fashion_mnist(directory: Path, train_images_magic: int = 2051) -> None:
    rng = np.random.default_rng(0)
    for prefix, count, images_magic in (("train", 40, train_images_magic), ("t10k", 20, 2051)):
        pixels = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images_magic, (count, 28, 28), pixels.tobytes())
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", 2049, (count,), labels.tobytes())


def test_fashion_mnist_parses_idx_from_override_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_tiny_fashion_mnist(tmp_path)
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))
    splits = load_dataset("fashion_mnist", holdout_size=10, resolution=14)
    assert (len(splits.train), len(splits.holdout), len(splits.validation)) == (30, 10, 20)
    assert splits.train.images.shape[1:] == (1, 14, 14)
    assert splits.train.images.dtype == torch.uint8
    assert set(splits.holdout.labels.tolist()) == set(range(10))


def test_fashion_mnist_bad_magic_names_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_tiny_fashion_mnist(tmp_path, train_images_magic=1234)
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(InvalidDataset, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion_mnist")


def test_fashion_mnist_truncated_file_names_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_tiny_fashion_mnist(tmp_path)
    labels_path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    _write_idx(labels_path, 2049, (20,), bytes(5))
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(InvalidDataset, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion_mnist")
