"""Dataset pages: built-ins shared and read-only, image-folder zips stored as checking, then
extracted safely by the check (played in this process: ``checks_in_process``), bad archives
rejected with their reason and no files."""
from __future__ import annotations

import html
import io
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

import adaptation.uploads as uploads
from adaptation.archives import ArchiveLimits
from adaptation.models import Dataset
from tests.stored_files import files_under

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("checks_in_process")]

DIGITS_SUMMARY = {"sizes": {"train": 1293, "holdout": 144, "validation": 360}, "num_classes": 10,
                  "in_channels": 1, "resolution": 8, "class_names": [str(d) for d in range(10)],
                  "class_counts": {"train": {"0": 129}, "holdout": {"0": 14}, "validation": {"0": 36}}}


def png(shade: int, size: int = 8, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), color=shade if mode == "L" else (shade, 0, 255 - shade)).save(buffer, "PNG")
    return buffer.getvalue()


def image_members(classes=("cats", "dogs"), per_class: int = 4, prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{name}/{i}.png": png(40 * c + 10 * i) for c, name in enumerate(classes) for i in range(per_class)}


def zip_bytes(members: dict[str, bytes | tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def digits(digits_dataset):
    digits_dataset.summary = DIGITS_SUMMARY
    digits_dataset.save()
    return digits_dataset


def upload_data(archive: bytes, **fields) -> dict:
    data = {"name": "pets", "resolution": "8", "channels": "auto", **fields}
    data["archive"] = SimpleUploadedFile("pets.zip", archive, content_type="application/zip")
    return data


def upload(client, archive: bytes, **fields):
    return client.post(reverse("dataset_upload"), upload_data(archive, **fields))


def folder_dataset(client, **fields) -> Dataset:
    """Upload the 2 classes x 4 PNGs archive through the page."""
    response = upload(client, zip_bytes(image_members()), **fields)
    assert response.status_code == 302, response.context["form"].errors
    return Dataset.objects.get(pk=response.url.rstrip("/").rsplit("/", 1)[-1])


# --------------------------------------------------------------------------- pages


def test_it_lists_builtins_and_own_uploads(client, owner, stranger, media, digits):
    client.force_login(stranger)
    folder_dataset(client, name="their pets")
    client.force_login(owner)
    folder_dataset(client, name="my pets")
    response = client.get(reverse("dataset_list"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "scikit-learn digits" in page and "1293" in page and "360" in page
    assert [row["dataset"].name for row in response.context["uploads"]] == ["my pets"]
    assert [row["dataset"].name for row in response.context["builtins"]] == ["scikit-learn digits"]


def test_it_shows_builtins_to_everyone(client, owner, stranger, media, digits):
    for user in (owner, stranger):
        client.force_login(user)
        response = client.get(reverse("dataset_detail", args=[digits.pk]))
        assert response.status_code == 200
        page = response.content.decode()
        assert "scikit-learn digits" in page and "1293" in page and "read-only" in page
        assert reverse("dataset_delete", args=[digits.pk]) not in page


def test_it_shows_the_upload_form(owner_client, media):
    response = owner_client.get(reverse("dataset_upload"))
    assert response.status_code == 200
    page = response.content.decode()
    assert 'value="32"' in page and "Automatic" in page and "200 MB" in page
    assert "js/upload.js" in page and "<progress" in page


@pytest.mark.parametrize("name", ["dataset_list", "dataset_upload"])
def test_it_requires_login(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


# --------------------------------------------------------------------------- upload


def test_it_uploads_and_extracts_an_image_folder(owner_client, owner, media):
    response = upload(owner_client, zip_bytes(image_members()))
    dataset = Dataset.objects.get()
    assert response.url == reverse("dataset_detail", args=[dataset.pk])
    assert (dataset.owner, dataset.name, dataset.kind, dataset.status) == (owner, "pets", "folder", "ready")
    summary = dataset.summary
    assert summary["class_names"] == ["cats", "dogs"]
    assert (summary["num_classes"], summary["in_channels"], summary["resolution"]) == (2, 1, 8)
    assert sum(summary["sizes"].values()) == 8 and all(size >= 2 for size in summary["sizes"].values())
    assert {split: sum(counts.values()) for split, counts in summary["class_counts"].items()} == summary["sizes"]

    folder = Path(dataset.archive.path)
    assert folder.parent == media / "datasets" / str(owner.pk)
    assert files_under(folder) == [f"{name}/{i}.png" for name in ("cats", "dogs") for i in range(4)]
    assert files_under(media) == [f"{dataset.archive.name}/{path}" for path in files_under(folder)]

    page = owner_client.get(response.url).content.decode()
    assert "images are being checked" in page and "status-ready" in page and "data-check-url" not in page
    assert "cats" in page and "dogs" in page and "Delete dataset" in page


def test_it_forces_colour_and_resolution(owner_client, media):
    dataset = folder_dataset(owner_client, channels="3", resolution="16")
    assert (dataset.summary["in_channels"], dataset.summary["resolution"]) == (3, 16)


def test_it_names_the_dataset_after_the_file(owner_client, media):
    assert folder_dataset(owner_client, name="").name == "pets"


def _symlink_archive() -> bytes:
    buffer = io.BytesIO(zip_bytes(image_members()))
    with zipfile.ZipFile(buffer, "a") as archive:
        link = zipfile.ZipInfo("cats/link.png")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


BAD_ARCHIVES = {
    "not a zip": (lambda: b"just some text", "not a zip archive"),
    "escaping path": (lambda: zip_bytes({**image_members(), "../evil.png": png(0)}),
                      "member '../evil.png' escapes the archive folder"),
    "absolute path": (lambda: zip_bytes({**image_members(), "/etc/evil.png": png(0)}),
                      "escapes the archive folder (absolute path)"),
    "symbolic link": (_symlink_archive, "member 'cats/link.png' is a symbolic link"),
    "member too large": (lambda: zip_bytes({**image_members(), "cats/huge.png": bytes(21 << 20)}),
                         "member 'cats/huge.png' is 21.0 MB uncompressed"),
    "zip bomb": (lambda: zip_bytes({**image_members(), "cats/bomb.png": bytes(4 << 20)}),
                 "looks like a zip bomb"),
    "not an image": (lambda: zip_bytes({**image_members(), "dogs/fake.png": b"this is not an image"}),
                     "dogs/fake.png: not a decodable image"),
    "one class": (lambda: zip_bytes(image_members(classes=("cats",))), "need at least 2"),
    "too few images": (lambda: zip_bytes(image_members(per_class=2)), "class has 2 image"),
}


@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_it_rejects_a_bad_archive_and_keeps_no_file(owner_client, media, case):
    make, message = BAD_ARCHIVES[case]
    response = upload(owner_client, make())
    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response.url == reverse("dataset_detail", args=[dataset.pk])
    assert (dataset.status, dataset.archive.name) == ("rejected", "")
    assert message in dataset.error and dataset.error.startswith("Rejected:")
    assert str(media) not in dataset.error  # no server paths
    assert html.escape(message) in owner_client.get(response.url).content.decode()
    assert files_under(media) == []


@pytest.mark.parametrize("limits, message", [
    (ArchiveLimits(max_members=5), "the archive has 8 members; at most 5 are allowed"),
    (ArchiveLimits(max_total_bytes=300), "the archive expands to more than 300 bytes"),
])
def test_it_applies_the_archive_limits(owner_client, media, monkeypatch, limits, message):
    monkeypatch.setattr(uploads, "DATASET_ARCHIVE_LIMITS", limits)
    upload(owner_client, zip_bytes(image_members()))
    dataset = Dataset.objects.get()
    assert dataset.status == "rejected" and message in dataset.error
    assert files_under(media) == []


# --------------------------------------------------------------------------- delete


def test_it_deletes_an_upload_and_its_images(owner_client, media, django_capture_on_commit_callbacks):
    dataset = folder_dataset(owner_client)
    assert files_under(media)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(reverse("dataset_delete", args=[dataset.pk]))
    assert response.status_code == 302 and response.url == reverse("dataset_list")
    assert not Dataset.objects.exists()
    assert files_under(media) == []


def test_it_never_deletes_a_builtin(owner_client, media, digits):
    assert owner_client.post(reverse("dataset_delete", args=[digits.pk])).status_code == 404
    assert Dataset.objects.filter(pk=digits.pk).exists()


def test_it_keeps_a_dataset_used_by_a_job(owner_client, owner, media, make_job):
    dataset = folder_dataset(owner_client)
    job = make_job(owner, status="finished")
    job.dataset = dataset
    job.save()
    response = owner_client.post(reverse("dataset_delete", args=[dataset.pk]), follow=True)
    assert "is used by 1 job(s)" in response.content.decode()
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert files_under(Path(dataset.archive.path))


def test_it_deletes_only_with_post(owner_client, media):
    dataset = folder_dataset(owner_client)
    assert owner_client.get(reverse("dataset_delete", args=[dataset.pk])).status_code == 405
    assert Dataset.objects.filter(pk=dataset.pk).exists()


@pytest.mark.parametrize("name, method", [("dataset_detail", "get"), ("dataset_delete", "post")])
def test_it_checks_ownership(client, owner, stranger, media, name, method):
    client.force_login(owner)
    dataset = folder_dataset(client)
    stored = files_under(media)
    client.force_login(stranger)
    assert getattr(client, method)(reverse(name, args=[dataset.pk])).status_code == 404
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert files_under(media) == stored


def test_the_page_shows_a_dataset_being_checked_to_its_owner_only(client, owner, stranger, media, monkeypatch):
    sent = []
    monkeypatch.setattr("adaptation.enqueue.enqueue_check", lambda name, *args: sent.append((name, args)))
    client.force_login(owner)
    response = upload(client, zip_bytes(image_members()), resolution="16", channels="3")
    dataset = Dataset.objects.get()
    assert (dataset.status, sent) == ("checking", [("check_dataset_upload", (dataset.pk, 16, False))])
    assert files_under(media) == [f"{dataset.archive.name}"] and dataset.archive.name.endswith(".zip")
    page = client.get(response.url).content.decode()
    assert f'data-check-url="{reverse("dataset_status", args=[dataset.pk])}"' in page and "js/check.js" in page
    assert client.get(reverse("dataset_status", args=[dataset.pk])).json() == {"status": "checking", "error": ""}
    assert "status-checking" in client.get(reverse("dataset_list")).content.decode()
    client.force_login(stranger)
    assert client.get(reverse("dataset_status", args=[dataset.pk])).status_code == 404


def test_deleting_a_dataset_while_it_is_checked_leaves_no_file(owner_client, media, monkeypatch,
                                                               django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr("adaptation.enqueue.enqueue_check", lambda name, *args: sent.append(args))
    upload(owner_client, zip_bytes(image_members()))
    dataset = Dataset.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(reverse("dataset_delete", args=[dataset.pk]))
    assert uploads.finish_dataset_check(*sent[0]) is None  # the worker finds no row to check
    assert files_under(media) == []


def test_the_check_takes_its_pixel_limits_from_the_settings(owner_client, media, settings):
    settings.DATASET_IMAGE_MAX_PIXELS = 50  # the archive's images are 8 x 8
    upload(owner_client, zip_bytes(image_members()))
    dataset = Dataset.objects.get()
    assert dataset.status == "rejected" and "at most 50 pixels per image" in dataset.error, dataset.error
    assert files_under(media) == []
