"""Safe extraction of uploaded image-folder zips: every unsafe or unusable archive is refused cleanly."""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from adaptation.archives import (ArchiveError, ArchiveLimits, extract_image_folder,
                                 load_archive_dataset)


def _png(shade: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), color=shade).save(buffer, format="PNG")
    return buffer.getvalue()


def _dataset_members(prefix: str = "", classes=("cats", "dogs"), per_class: int = 4) -> dict[str, bytes]:
    return {f"{prefix}{name}/{i}.png": _png(40 * c + 10 * i)
            for c, name in enumerate(classes) for i in range(per_class)}


def _zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.fixture
def parent(tmp_path) -> Path:
    folder = tmp_path / "uploads"
    folder.mkdir()
    return folder


def _assert_nothing_left(parent: Path) -> None:
    assert list(parent.iterdir()) == [], "a failed extraction left files behind"


def _refused(zip_path: Path, parent: Path, limits: ArchiveLimits = ArchiveLimits()) -> str:
    with pytest.raises(ArchiveError) as caught:
        extract_image_folder(zip_path, parent / "dataset", limits)
    _assert_nothing_left(parent)
    return str(caught.value)


# --------------------------------------------------------------------------- accepted archives


def test_good_archive_extracts_class_folders(tmp_path, parent):
    members = _dataset_members()
    members["notes.txt"] = b"ignored"
    members["cats/readme.md"] = b"ignored"
    zip_path = _zip(tmp_path / "data.zip", members)
    root = extract_image_folder(zip_path, parent / "dataset")
    assert root == parent / "dataset"
    assert sorted(p.name for p in root.iterdir()) == ["cats", "dogs"]
    assert sorted(p.name for p in (root / "cats").iterdir()) == ["0.png", "1.png", "2.png", "3.png"]
    assert (root / "dogs" / "2.png").read_bytes() == members["dogs/2.png"]
    assert [p.name for p in parent.iterdir()] == ["dataset"]  # no temporary folder left


def test_single_top_level_folder_and_macos_clutter_are_handled(tmp_path, parent):
    members = _dataset_members("photos/")
    members["__MACOSX/photos/cats/._0.png"] = b"resource fork"
    members["photos/.DS_Store"] = b"finder"
    members["photos/cats/.hidden.png"] = b"not an image"
    zip_path = _zip(tmp_path / "data.zip", members)
    root = extract_image_folder(zip_path, parent / "dataset")
    assert sorted(p.name for p in root.iterdir()) == ["cats", "dogs"]
    assert not (root / "cats" / ".hidden.png").exists()


def test_load_archive_dataset_returns_splits(tmp_path, parent):
    zip_path = _zip(tmp_path / "data.zip", _dataset_members(per_class=5))
    splits = load_archive_dataset(zip_path, parent / "dataset", resolution=8, seed=0,
                                  holdout_size=0.2, validation_size=0.2)
    total = len(splits.train) + len(splits.holdout) + len(splits.validation)
    assert total == 10
    assert len(splits.holdout) >= 2 and len(splits.validation) >= 2
    assert splits.train.images.shape[1:] == (1, 8, 8)
    assert (parent / "dataset" / "cats").is_dir()


def test_accepts_an_open_file_object(tmp_path, parent):
    zip_path = _zip(tmp_path / "data.zip", _dataset_members())
    with open(zip_path, "rb") as handle:
        root = extract_image_folder(handle, parent / "dataset")
    assert (root / "dogs" / "0.png").is_file()


def test_existing_destination_is_not_overwritten(tmp_path, parent):
    (parent / "dataset").mkdir()
    zip_path = _zip(tmp_path / "data.zip", _dataset_members())
    with pytest.raises(FileExistsError):
        extract_image_folder(zip_path, parent / "dataset")


def test_a_small_flat_image_is_not_taken_for_a_zip_bomb(tmp_path, parent):
    members = _dataset_members()
    flat = io.BytesIO()
    Image.new("L", (64, 64), color=0).save(flat, format="BMP")  # ~5 KB, compresses >200:1
    members["cats/flat.bmp"] = flat.getvalue()
    root = extract_image_folder(_zip(tmp_path / "data.zip", members), parent / "dataset")
    assert (root / "cats" / "flat.bmp").is_file()


# --------------------------------------------------------------------------- refused archives


@pytest.mark.parametrize("name, reason", [
    ("../evil.png", "'..'"),
    ("cats/../../evil.png", "'..'"),
    ("/etc/x.png", "absolute"),
    ("C:/windows/x.png", "drive"),
    ("..\\evil.png", "'..'"),
])
def test_member_escaping_the_folder_is_refused(tmp_path, parent, name, reason):
    members = _dataset_members()
    members[name] = _png(0)
    message = _refused(_zip(tmp_path / "data.zip", members), parent)
    assert f"member '{name}' escapes the archive folder" in message
    assert reason in message


def test_escaping_member_is_refused_even_when_it_would_be_ignored(tmp_path, parent):
    members = _dataset_members()
    members["../notes.txt"] = b"text"
    assert "escapes the archive folder" in _refused(_zip(tmp_path / "data.zip", members), parent)


def test_symbolic_link_is_refused(tmp_path, parent):
    zip_path = _zip(tmp_path / "data.zip", _dataset_members())
    with zipfile.ZipFile(zip_path, "a") as archive:
        link = zipfile.ZipInfo("cats/link.png")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    assert "member 'cats/link.png' is a symbolic link" in _refused(zip_path, parent)


def test_too_many_members(tmp_path, parent):
    message = _refused(_zip(tmp_path / "data.zip", _dataset_members()), parent,
                       ArchiveLimits(max_members=5))
    assert "8 members" in message and "at most 5" in message


def test_member_over_the_size_limit(tmp_path, parent):
    members = _dataset_members()
    members["cats/big.png"] = bytes(range(256)) * 64  # 16 KB
    message = _refused(_zip(tmp_path / "data.zip", members), parent,
                       ArchiveLimits(max_member_bytes=10_000))
    assert "member 'cats/big.png'" in message and "per file" in message


def test_total_size_over_the_limit(tmp_path, parent):
    message = _refused(_zip(tmp_path / "data.zip", _dataset_members()), parent,
                       ArchiveLimits(max_total_bytes=300))
    assert "expands to more than" in message


def test_high_compression_ratio_is_refused(tmp_path, parent):
    members = _dataset_members()
    members["dogs/zeros.png"] = bytes(1 << 20)
    message = _refused(_zip(tmp_path / "data.zip", members), parent, ArchiveLimits(max_ratio=10))
    assert "member 'dogs/zeros.png'" in message and "zip bomb" in message


def test_encrypted_member_is_refused(tmp_path, parent):
    members = _dataset_members()
    members["cats/secret.png"] = b"pretend ciphertext"
    zip_path = _zip(tmp_path / "data.zip", members)
    position = _central_entry(zip_path.read_bytes(), "cats/secret.png")
    data = bytearray(zip_path.read_bytes())
    data[position + 8] |= 0x1  # general-purpose flag bit 0: encrypted
    zip_path.write_bytes(bytes(data))
    assert "member 'cats/secret.png' is encrypted" in _refused(zip_path, parent)


@pytest.mark.parametrize("content", [b"", b"just some text", b"PK\x03\x04 truncated"])
def test_not_a_zip(tmp_path, parent, content):
    path = tmp_path / "data.zip"
    path.write_bytes(content)
    assert "not a zip archive" in _refused(path, parent)


def test_one_class_only(tmp_path, parent):
    message = _refused(_zip(tmp_path / "data.zip", _dataset_members(classes=("cats",))), parent)
    assert "1 class folder(s)" in message and "cats" in message and "at least 2" in message


def test_one_class_inside_a_wrapper_folder(tmp_path, parent):
    members = _dataset_members("photos/", classes=("cats",))
    assert "1 class folder(s)" in _refused(_zip(tmp_path / "data.zip", members), parent)


def test_duplicate_member_is_refused(tmp_path, parent):
    members = _dataset_members()
    members["cats//0.png"] = _png(1)
    assert "appears twice" in _refused(_zip(tmp_path / "data.zip", members), parent)


def _central_entry(data: bytes, name: str) -> int:
    """Offset of ``name``'s central-directory header."""
    encoded = name.encode()
    position = 0
    while True:
        position = data.index(b"PK\x01\x02", position)
        (name_length,) = struct.unpack_from("<H", data, position + 28)
        if data[position + 46:position + 46 + name_length] == encoded:
            return position
        position += 4


def _patch_declared_size(data: bytes, name: str, size: int) -> bytes:
    """Rewrite the uncompressed size a central-directory entry declares for ``name``."""
    position = _central_entry(data, name)
    return data[:position + 24] + struct.pack("<I", size) + data[position + 28:]


@pytest.mark.parametrize("declared", [100, 5000])
def test_lying_size_header_stops_extraction_and_cleans_up(tmp_path, parent, declared):
    members = _dataset_members()
    members["dogs/liar.png"] = bytes(range(256)) * 8  # 2048 bytes
    zip_path = _zip(tmp_path / "data.zip", members)
    zip_path.write_bytes(_patch_declared_size(zip_path.read_bytes(), "dogs/liar.png", declared))
    message = _refused(zip_path, parent)
    assert "member 'dogs/liar.png'" in message


def test_corrupt_member_data_cleans_up(tmp_path, parent):
    members = _dataset_members()
    zip_path = _zip(tmp_path / "data.zip", members)
    data = bytearray(zip_path.read_bytes())
    victim = members["dogs/3.png"]
    # Stored data of a PNG is recognisable; flip bytes in the middle of the last member's payload.
    with zipfile.ZipFile(zip_path) as archive:
        info = archive.getinfo("dogs/3.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 5, start + min(info.compress_size, len(victim)) - 1):
        data[i] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    assert "member 'dogs/3.png' is corrupt" in _refused(zip_path, parent)


def test_text_named_png_is_reported_by_its_archive_path(tmp_path, parent):
    members = _dataset_members("photos/")
    members["photos/dogs/fake.png"] = b"this is not an image"
    with pytest.raises(ArchiveError) as caught:
        load_archive_dataset(_zip(tmp_path / "data.zip", members), parent / "dataset", resolution=8)
    message = str(caught.value)
    assert "photos/dogs/fake.png" in message and "not a decodable image" in message
    assert str(parent) not in message  # server paths are not shown to the user
    _assert_nothing_left(parent)


def test_class_with_too_few_images_cleans_up(tmp_path, parent):
    members = _dataset_members(per_class=4)
    members.update({"birds/0.png": _png(3)})
    with pytest.raises(ArchiveError, match="birds: class has 1 image"):
        load_archive_dataset(_zip(tmp_path / "data.zip", members), parent / "dataset", resolution=8)
    _assert_nothing_left(parent)


def test_a_refused_archive_leaves_none_of_the_folders_it_created(tmp_path, parent):
    members = {**_dataset_members(), "dogs/fake.png": b"not an image"}
    with pytest.raises(ArchiveError, match="not a decodable image"):
        load_archive_dataset(_zip(tmp_path / "data.zip", members), parent / "owner" / "dataset",
                             resolution=8)
    _assert_nothing_left(parent)  # nor the owner folder that the extraction made
