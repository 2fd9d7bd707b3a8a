"""Image folders are bounded by what they decode to: headers first, pixel limits, one image at a
time, uint8; the awkward cases (palette, 1-bit, 16-bit, truncated, animated, EXIF-rotated,
Pillow's own bomb check) each decode correctly or fail with a message naming the file."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adaptation.netadapt.data import iterate_batches, load_image_folder
from adaptation.netadapt.image_folder import (ImageHeader, InvalidDataset, PixelLimits, decode_image,
                                              read_header, summarise_image_folder)

LIMITS = PixelLimits()


def _save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def _folder(root: Path, image: Image.Image, suffix: str = ".png", per_class: int = 3) -> Path:
    for name in ("a", "b"):
        for index in range(per_class):
            _save(root / name / f"{index}{suffix}", image)
    return root


def _decode(path: Path, grayscale: bool, resolution: int = 8) -> np.ndarray:
    return decode_image(read_header(path, LIMITS), grayscale, resolution)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds no pixels at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


def test_an_image_over_the_per_image_limit_is_refused_by_its_header(tmp_path):
    path = _save(tmp_path / "bomb.png", Image.new("1", (6000, 5000)))
    assert path.stat().st_size < 100_000
    with pytest.raises(InvalidDataset) as caught:
        read_header(path, PixelLimits(max_image_pixels=25_000_000))
    assert str(caught.value) == (f"{path}: the image is 6000x5000 (30,000,000 pixels); "
                                 "at most 25,000,000 pixels per image")


def test_pillows_own_bomb_check_is_a_clear_error(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(20000, 20000))  # above 2 x Image.MAX_IMAGE_PIXELS
    with pytest.raises(InvalidDataset, match=r"huge.png: the image is too large to decode"):
        read_header(path, LIMITS)


def test_the_images_of_a_folder_are_capped_together_before_any_is_decoded(tmp_path):
    root = _folder(tmp_path / "pets", Image.new("L", (100, 100)))
    with pytest.raises(InvalidDataset, match=r"b/0.png: the images add up to more than 35,000 pixels"):
        load_image_folder(root, resolution=8, limits=PixelLimits(max_total_pixels=35_000))


def test_a_folder_is_held_as_uint8_and_normalised_per_batch(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "pets"
    for name in ("a", "b"):
        for index in range(6):
            _save(root / name / f"{index}.png", Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)))
    splits = load_image_folder(root, resolution=16)
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1:] == (3, 16, 16)
    batch = torch.cat([images for images, _ in iterate_batches(splits.train, 4, shuffle=False)])
    assert batch.dtype == torch.float32
    assert torch.allclose(batch.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(batch.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    summary = summarise_image_folder(root, resolution=16)
    assert summary == {**splits.summary(), "mean": summary["mean"], "std": summary["std"]}
    assert np.allclose(summary["mean"], splits.mean) and np.allclose(summary["std"], splits.std)


def test_palette_and_one_bit_images_decode(tmp_path):
    palette = Image.new("P", (4, 4))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    rgb = _decode(_save(tmp_path / "p.png", palette), grayscale=False, resolution=4)
    assert rgb.shape == (3, 4, 4) and rgb.dtype == np.uint8
    assert tuple(rgb[:, 0, 0]) == (255, 0, 0) and tuple(rgb[:, 3, 3]) == (0, 0, 0)
    one_bit = Image.new("1", (4, 4), 1)
    one_bit.putpixel((0, 0), 0)
    gray = _decode(_save(tmp_path / "b.png", one_bit), grayscale=True, resolution=4)
    assert gray.shape == (1, 4, 4) and gray[0, 0, 0] == 0 and gray[0, 3, 3] == 255


def test_sixteen_bit_images_keep_their_range(tmp_path):
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert _decode(_save(tmp_path / "deep.png", deep), grayscale=True, resolution=4).min() == 255


def test_a_truncated_image_is_named(tmp_path):
    data = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(data, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data.getvalue()[:-40])
    with pytest.raises(InvalidDataset, match=r"cut.png: not a decodable image"):
        _decode(path, grayscale=False)


def test_an_animated_image_is_refused(tmp_path):
    frames = [Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 255)]
    path = tmp_path / "moving.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidDataset, match=r"moving.gif: the image is animated \(2 frames\)"):
        read_header(path, LIMITS)


def test_an_exif_rotated_photo_is_turned_upright(tmp_path):
    """A 20x10 JPEG whose left half is dark, stored sideways (orientation 6: rotate 90 degrees
    clockwise to view): upright, its top half is dark."""
    pixels = np.full((10, 20), 255, dtype=np.uint8)
    pixels[:, :10] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "photo.jpg", Image.fromarray(pixels), exif=exif, quality=95)
    upright = _decode(path, grayscale=True, resolution=8)[0]
    assert upright[:3].mean() < 40 and upright[5:].mean() > 215


def test_a_header_that_changes_before_decoding_is_refused(tmp_path):
    path = _save(tmp_path / "x.png", Image.new("L", (4, 4)))
    stale = ImageHeader(path, 2, 2, "L")
    with pytest.raises(InvalidDataset, match="changed while it was being read"):
        decode_image(stale, grayscale=True, resolution=4)


@pytest.mark.parametrize("content_format", ["TIFF", "EPS", "PPM"])
def test_only_the_listed_formats_are_decoded_whatever_the_name(tmp_path, content_format):
    """By content Pillow would open these too (EPS by running Ghostscript); named .png, refused."""
    path = _save(tmp_path / "disguised.png", Image.new("L", (8, 8)), format=content_format)
    with pytest.raises(InvalidDataset, match=r"disguised.png: not a decodable image \(not PNG, JPEG, BMP, GIF or WebP\)"):
        read_header(path, LIMITS)


def test_a_multi_picture_jpeg_is_read_as_its_first_picture(tmp_path):
    path = tmp_path / "camera.jpg"
    Image.new("L", (8, 8), 0).save(path, format="MPO", save_all=True, append_images=[Image.new("L", (4, 4), 255)])
    header = read_header(path, LIMITS)
    assert (header.width, header.height) == (8, 8)
    assert decode_image(header, grayscale=True, resolution=4).max() < 10
