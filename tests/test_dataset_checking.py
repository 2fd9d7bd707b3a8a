"""check_dataset_archive: an uploaded zip extracted and decoded in a bounded child process."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptation.archives import ArchiveError, load_archive_dataset
from adaptation.checking.datasets import (DEFAULT_MEMORY_BYTES, DatasetCheckLimits, DatasetRejected,
                                          check_dataset_archive)
from tests.stored_files import files_under

MiB = 1 << 20


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def pixel_bomb(tmp_path_factory) -> Path:
    """Six one-bit 10000x10000 PNGs: a few KB of zip, 600 million pixels."""
    bomb = _png(Image.new("1", (10000, 10000)))
    folder = tmp_path_factory.mktemp("bomb")
    return _zip(folder / "bomb.zip", {f"{c}/{i}.png": bomb for c in ("a", "b") for i in range(3)})


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> Path:
    """1200 one-pixel PNGs: at resolution 224 that was 3.4 GB of float32 in the web process."""
    pixel = _png(Image.new("L", (1, 1), 128))
    folder = tmp_path_factory.mktemp("tiny")
    return _zip(folder / "tiny.zip", {f"{c}/{i}.png": pixel for c in ("a", "b") for i in range(600)})


def test_it_refuses_the_pixel_bomb_by_its_headers_and_leaves_nothing(pixel_bomb, tmp_path):
    assert pixel_bomb.stat().st_size < 10_000
    with pytest.raises(DatasetRejected) as caught:
        check_dataset_archive(pixel_bomb, tmp_path / "datasets" / "d", resolution=224)
    assert caught.value.kind == "invalid"
    assert str(caught.value) == ("a/0.png: the image is 10000x10000 (100,000,000 pixels); "
                                 "at most 25,000,000 pixels per image")
    assert caught.value.peak_rss_bytes < 100 * MiB  # not one of them was decoded
    assert list(tmp_path.iterdir()) == []


def test_it_accepts_many_tiny_images_with_the_child_under_its_ceiling(tiny_images, tmp_path):
    check = check_dataset_archive(tiny_images, tmp_path / "d", resolution=224)
    assert check.summary["sizes"] == {"train": 864, "holdout": 96, "validation": 240}
    assert (check.summary["in_channels"], check.summary["resolution"]) == (1, 224)
    assert check.peak_rss_bytes < DEFAULT_MEMORY_BYTES
    assert check.peak_rss_bytes < 128 * MiB  # one image at a time: 1200 x 224 x 224 float32 was 240 MB
    assert len(files_under(tmp_path / "d")) == 1200


def test_its_summary_is_the_one_the_job_loads(tmp_path):
    rng = np.random.default_rng(0)
    members = {f"{c}/{i}.png": _png(Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)))
               for c in ("cat", "dog") for i in range(5)}
    archive = _zip(tmp_path / "pets.zip", members)
    check = check_dataset_archive(archive, tmp_path / "checked", resolution=16)
    loaded = load_archive_dataset(archive, tmp_path / "loaded", resolution=16).summary()
    for key in ("sizes", "class_counts", "num_classes", "in_channels", "resolution", "class_names"):
        assert check.summary[key] == loaded[key]
    assert np.allclose(check.summary["mean"], loaded["mean"]) and np.allclose(check.summary["std"], loaded["std"])


def test_a_check_past_its_memory_ceiling_is_memory_and_leaves_nothing(tmp_path):
    gradient = np.tile(np.arange(4000, dtype=np.uint8)[None, :, None], (4000, 1, 3))  # 16 Mpx, compresses well
    big = _png(Image.fromarray(gradient))
    archive = _zip(tmp_path / "big.zip", {f"{c}/{i}.png": big for c in ("a", "b") for i in range(3)})
    destination = tmp_path / "datasets" / "7" / "d"
    with pytest.raises(DatasetRejected) as caught:
        check_dataset_archive(archive, destination, resolution=32,
                              limits=DatasetCheckLimits(memory_bytes=96 * MiB))
    assert caught.value.kind == "memory"
    assert "needed more than 96.0 MB of memory" in str(caught.value)
    assert caught.value.peak_rss_bytes < 96 * MiB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zip"]


def test_a_check_past_its_time_is_time_and_leaves_nothing(tiny_images, tmp_path):
    with pytest.raises(DatasetRejected) as caught:
        check_dataset_archive(tiny_images, tmp_path / "datasets" / "d", resolution=224,
                              limits=DatasetCheckLimits(seconds=0.01))
    assert caught.value.kind == "time" and "longer than 0.01 s" in str(caught.value)
    assert isinstance(caught.value, ArchiveError)  # what the upload services already turn into a refusal
    assert list(tmp_path.iterdir()) == []


def test_a_broken_image_is_named_as_in_the_archive(tmp_path):
    pixel = _png(Image.new("RGB", (4, 4)))
    members = {f"{c}/{i}.png": pixel for c in ("a", "b") for i in range(3)}
    members["b/2.png"] = pixel[: len(pixel) // 2]  # truncated
    archive = _zip(tmp_path / "broken.zip", members)
    with pytest.raises(DatasetRejected) as caught:
        check_dataset_archive(archive, tmp_path / "d", resolution=8)
    assert caught.value.kind == "invalid" and str(caught.value).startswith("b/2.png: not a decodable image")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.zip"]
