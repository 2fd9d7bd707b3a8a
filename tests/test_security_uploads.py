"""Probes of the uploads: what an attacker or a careless client sends is refused cleanly.

- A body sent with chunked transfer encoding (no Content-Length) past the upload limit gets the
  size message (form error on the page, 400 on the API), not "This field is required.", and is
  not read to its end; one within the limit is accepted as with a Content-Length.
- A refused dataset archive (not a zip, a path escaping the folder, too many members, an image
  that does not decode...) leaves a rejected row with the reason and no file and no folder, not
  even its owner's folder (the checks run in this process as they are sent: ``checks_in_process``).

The chunked requests are sent to the real ASGI application (``webapp.asgi.application``, the
one uvicorn serves) as uvicorn hands them over: body messages, no Content-Length header. A real
chunked request over a socket to uvicorn is in tests/test_e2e_datasets.py.
"""
from __future__ import annotations

import asyncio
import io
import os
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.urls import reverse
from PIL import Image
from rest_framework.authtoken.models import Token

import adaptation.uploads as uploads
from adaptation.archives import ArchiveLimits
from adaptation.models import Dataset
from tests.user_objects import image_zip, png, upload_dataset

LIMIT = 1000
LIMIT_MESSAGE = "The file is larger than the 1000 bytes limit."
CHUNK = 16 * 1024


def everything_under(root: Path) -> list[str]:
    """Every file and folder below ``root`` (relative paths; [] when it does not exist)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


# --------------------------------------------------------------------------- chunked uploads


def run_asgi(scope: dict, chunks: list[bytes]) -> tuple[int, bytes, int]:
    """(status, response body, body messages pulled) of the served application, sent ``chunks``
    as body messages and never disconnecting (it must not wait for more than it needs)."""
    from webapp.asgi import application

    sent, pulled = [], []

    async def receive():
        if len(pulled) < len(chunks):
            pulled.append(chunks[len(pulled)])
            return {"type": "http.request", "body": pulled[-1], "more_body": len(pulled) < len(chunks)}
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    asyncio.run(application(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), len(pulled)


def chunked_post(path: str, fields: dict, headers: list[tuple[bytes, bytes]]) -> tuple[dict, list[bytes]]:
    """(ASGI scope, body chunks) of a multipart POST sent chunked: no Content-Length header."""
    body = encode_multipart(BOUNDARY, fields)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", MULTIPART_CONTENT.encode()),
                    (b"transfer-encoding", b"chunked"), *headers],
    }
    return scope, [body[i:i + CHUNK] for i in range(0, len(body), CHUNK)]


@pytest.fixture
def small_limit(settings, tmp_path):
    """A 1000-byte upload limit and a media folder of the test's own."""
    settings.UPLOAD_MAX_BYTES = LIMIT
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FILE_UPLOAD_TEMP_DIR = tmp_path / "upload-tmp"
    settings.FILE_UPLOAD_TEMP_DIR.mkdir()
    return settings


def token_header(user) -> tuple[bytes, bytes]:
    return b"authorization", f"Token {Token.objects.get_or_create(user=user)[0].key}".encode()


def dataset_fields(archive: bytes) -> dict:
    return {"name": "pets", "resolution": "8", "channels": "auto",
            "archive": SimpleUploadedFile("pets.zip", archive, content_type="application/zip")}


def noise_png() -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("L", (64, 64), os.urandom(64 * 64)).save(buffer, "PNG")
    return buffer.getvalue()


def big_archive() -> bytes:
    """A valid image-folder zip of about 200 KB (noise does not compress)."""
    return image_zip(images={"cats": [noise_png() for _ in range(24)], "dogs": [noise_png() for _ in range(24)]})


@pytest.mark.django_db(transaction=True)
def test_a_chunked_oversize_upload_to_the_api_gets_the_size_message(owner, small_limit):
    archive = big_archive()
    scope, chunks = chunked_post("/api/v1/datasets", dataset_fields(archive), [token_header(owner)])
    status, body, pulled = run_asgi(scope, chunks)
    assert status == 400, body
    assert LIMIT_MESSAGE in body.decode() and "This field is required" not in body.decode()
    assert pulled < len(chunks)  # the rest of the body was never read
    assert not Dataset.objects.filter(owner=owner).exists()
    assert everything_under(small_limit.MEDIA_ROOT) == []
    assert everything_under(small_limit.FILE_UPLOAD_TEMP_DIR) == []


@pytest.mark.django_db(transaction=True)
def test_a_chunked_oversize_upload_to_the_page_gets_the_size_message(client, owner, small_limit):
    client.force_login(owner)
    token = "a" * 32
    scope, chunks = chunked_post(reverse("dataset_upload"), {"csrfmiddlewaretoken": token,
                                                             **dataset_fields(big_archive())},
                                 [(b"cookie", f"sessionid={client.cookies['sessionid'].value}; "
                                              f"csrftoken={token}".encode())])
    status, body, pulled = run_asgi(scope, chunks)
    assert status == 200  # the form again, with the limit on the archive field
    page = body.decode()
    assert LIMIT_MESSAGE in page and "This field is required" not in page
    assert pulled < len(chunks)
    assert not Dataset.objects.filter(owner=owner).exists()
    assert everything_under(small_limit.MEDIA_ROOT) == []


@pytest.mark.django_db(transaction=True)
def test_a_chunked_upload_within_the_limit_is_stored(owner, small_limit, checks_in_process):
    small_limit.UPLOAD_MAX_BYTES = 1 << 20
    archive = big_archive()
    scope, chunks = chunked_post("/api/v1/datasets", dataset_fields(archive), [token_header(owner)])
    assert len(chunks) > 2
    status, body, pulled = run_asgi(scope, chunks)
    assert status == 202, body
    dataset = Dataset.objects.get(owner=owner)
    assert dataset.summary["class_names"] == ["cats", "dogs"] and pulled == len(chunks)


# --------------------------------------------------------------------------- refused datasets


def with_member(name: str, data: bytes) -> bytes:
    """``image_zip()`` plus one more member."""
    buffer = io.BytesIO(image_zip())
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


#: case: (archive, archive limits or None, the error shown)
REFUSED = {
    "not a zip": (lambda: b"PK\x03\x04 but not really a zip", None, "not a zip archive"),
    "path traversal": (lambda: with_member("../../evil.png", png(0)), None,
                       "member '../../evil.png' escapes the archive folder"),
    "too many members": (image_zip, ArchiveLimits(max_members=5), "at most 5 are allowed"),
    "bad image": (lambda: with_member("dogs/fake.png", b"this is not an image"), None,
                  "dogs/fake.png: not a decodable image"),
    "too few images": (lambda: image_zip(per_class=2), None, "class has 2 image"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(REFUSED))
@pytest.mark.parametrize("first_upload", [True, False], ids=["first upload", "owner has a dataset"])
def test_a_refused_dataset_leaves_no_folder(client, owner, media, monkeypatch, case, first_upload,
                                            checks_in_process):
    make, limits, message = REFUSED[case]
    if not first_upload:
        upload_dataset(owner, name="earlier")
    if limits is not None:
        monkeypatch.setattr(uploads, "DATASET_ARCHIVE_LIMITS", limits)
    before = everything_under(media)
    client.force_login(owner)
    response = client.post(reverse("dataset_upload"), dataset_fields(make()))
    assert response.status_code == 302
    refused = Dataset.objects.get(owner=owner, name="pets")
    assert refused.status == "rejected" and message in refused.error
    assert everything_under(media) == before


@pytest.mark.django_db
def test_a_dataset_whose_row_cannot_be_saved_leaves_no_folder(owner, media, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(Dataset.objects, "create", refuse)
    with pytest.raises(RuntimeError):
        upload_dataset(owner)
    assert everything_under(media) == []
