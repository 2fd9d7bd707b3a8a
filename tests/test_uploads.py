"""The upload size limit: an oversize upload is stopped while it is read, stored nowhere, and named on the page."""
from __future__ import annotations

import asyncio

import pytest
from django.core.asgi import get_asgi_application
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.urls import reverse

from adaptation.models import Dataset, ModelUpload
from tests.test_dataset_pages import image_members, zip_bytes
from tests.test_model_pages import files_under, upload_data
from webapp.lib.uploads import MULTIPART_ALLOWANCE, UploadLimitASGIMiddleware, human_size

LIMIT = 1000
LIMIT_MESSAGE = "The file is larger than the 1000 bytes limit."


class RecordingHandler(FileUploadHandler):
    """Placed after the limit handler: records the file bytes that got past it."""

    received: list[int] = []

    def receive_data_chunk(self, raw_data, start):
        RecordingHandler.received.append(len(raw_data))
        return raw_data

    def file_complete(self, file_size):
        return None


@pytest.fixture
def limited(settings, tmp_path):
    """A 1000-byte limit; every upload goes to a temporary file in a folder the test can inspect."""
    settings.UPLOAD_MAX_BYTES = LIMIT
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FILE_UPLOAD_TEMP_DIR = tmp_path / "upload-tmp"
    settings.FILE_UPLOAD_TEMP_DIR.mkdir()
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0
    settings.FILE_UPLOAD_HANDLERS = [
        "webapp.lib.uploads.UploadLimitHandler",
        "tests.test_uploads.RecordingHandler",
        "django.core.files.uploadhandler.TemporaryFileUploadHandler",
    ]
    RecordingHandler.received = []
    return settings


def _assert_nothing_stored(settings):
    assert files_under(settings.MEDIA_ROOT) == []
    assert files_under(settings.FILE_UPLOAD_TEMP_DIR) == []
    assert not ModelUpload.objects.exists() and not Dataset.objects.exists()


def test_it_names_sizes_for_people():
    assert human_size(200 * 1024 * 1024) == "200 MB"
    assert human_size(1536) == "1.5 KB"
    assert human_size(1000) == "1000 bytes"


def test_the_limit_handler_comes_first(settings):
    assert settings.FILE_UPLOAD_HANDLERS[0] == "webapp.lib.uploads.UploadLimitHandler"


@pytest.mark.django_db
def test_it_stops_an_oversize_model_upload(client, owner, limited):
    client.force_login(owner)
    response = client.post(reverse("model_upload"), upload_data(b"x" * 5000))
    assert response.status_code == 200
    assert LIMIT_MESSAGE in response.content.decode()
    assert response.context["form"].errors["file"] == [LIMIT_MESSAGE]
    assert RecordingHandler.received == []  # the first (and only) chunk went over the limit
    _assert_nothing_stored(limited)


@pytest.mark.django_db
def test_it_stops_reading_once_the_limit_is_passed(client, owner, limited):
    limited.UPLOAD_MAX_BYTES = 100_000  # the body (150 KB) is within the Content-Length allowance
    client.force_login(owner)
    response = client.post(reverse("model_upload"), upload_data(b"x" * 150_000))
    assert "The file is larger than the 97.7 KB limit." in response.content.decode()
    assert sum(RecordingHandler.received) <= 100_000 < 150_000
    _assert_nothing_stored(limited)


@pytest.mark.django_db
def test_it_stops_at_the_file_when_the_content_length_is_too_large(client, owner, limited):
    limited.UPLOAD_MAX_BYTES = 100_000
    client.force_login(owner)
    response = client.post(reverse("model_upload"), upload_data(b"x" * (100_000 + MULTIPART_ALLOWANCE)))
    assert "larger than the 97.7 KB limit" in response.context["form"].errors["file"][0]
    assert RecordingHandler.received == []  # not even the first 64 KB chunk
    _assert_nothing_stored(limited)


@pytest.mark.django_db
def test_it_passes_a_file_within_the_limit(client, owner, limited, checks_in_process):
    client.force_login(owner)
    response = client.post(reverse("model_upload"), upload_data(b"x" * 900))
    assert response.status_code == 302
    upload = ModelUpload.objects.get()
    assert upload.status == "rejected" and "not a PyTorch weights file" in upload.error  # the pre-flight read it
    assert sum(RecordingHandler.received) == 900
    assert files_under(limited.MEDIA_ROOT) == [] and files_under(limited.FILE_UPLOAD_TEMP_DIR) == []


@pytest.mark.django_db
def test_it_stops_an_oversize_dataset_upload(client, owner, limited):
    archive = zip_bytes(image_members())
    assert len(archive) > LIMIT
    client.force_login(owner)
    response = client.post(reverse("dataset_upload"), {
        "name": "pets", "resolution": "8", "channels": "auto",
        "archive": SimpleUploadedFile("pets.zip", archive)})
    assert response.status_code == 200
    assert response.context["form"].errors["archive"] == [LIMIT_MESSAGE]
    _assert_nothing_stored(limited)


# --------------------------------------------------------------------------- ASGI


def _run_asgi(app, scope, chunks: list[bytes]):
    """Drive ``app`` with a body sent in ``chunks``; returns (messages sent, chunks pulled)."""
    sent, pulled = [], []

    async def receive():
        if len(pulled) < len(chunks):
            pulled.append(chunks[len(pulled)])
            return {"type": "http.request", "body": pulled[-1], "more_body": len(pulled) < len(chunks)}
        await asyncio.Event().wait()  # the client neither sends more nor disconnects

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, pulled


def _body_reader(received: list[bytes]):
    async def app(scope, receive, send):
        while True:
            message = await receive()
            received.append(message["body"])
            if not message["more_body"]:
                return
    return app


def _with_length(chunks: list[bytes]) -> dict:
    return {"type": "http", "headers": [(b"content-length", str(len(b"".join(chunks))).encode())]}


def test_the_asgi_middleware_ends_an_oversize_body(settings):
    settings.UPLOAD_MAX_BYTES = LIMIT
    received: list[bytes] = []
    chunks = [b"x" * 50_000] * 4
    _, pulled = _run_asgi(UploadLimitASGIMiddleware(_body_reader(received)), _with_length(chunks), chunks)
    assert len(b"".join(received)) == LIMIT + MULTIPART_ALLOWANCE
    assert len(pulled) == 2  # the other 100 KB were never read


def test_the_asgi_middleware_passes_a_body_within_the_limit(settings):
    received: list[bytes] = []
    chunks = [b"a" * 30_000, b"b" * 30_000]
    _, pulled = _run_asgi(UploadLimitASGIMiddleware(_body_reader(received)), _with_length(chunks), chunks)
    assert received == chunks and pulled == chunks


@pytest.mark.django_db(transaction=True)
def test_it_shows_the_limit_when_served_over_asgi(client, owner, limited):
    """Django's ASGI handler reads the whole body before the upload handlers run: the middleware
    ends it at the limit, and the page still shows the form with the limit."""
    client.force_login(owner)
    token = "a" * 32
    data = {"csrfmiddlewaretoken": token, **upload_data(b"x" * 300_000)}
    body = encode_multipart(BOUNDARY, data)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": reverse("model_upload"), "raw_path": reverse("model_upload").encode(),
        "query_string": b"", "root_path": "", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", MULTIPART_CONTENT.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cookie", f"sessionid={client.cookies['sessionid'].value}; csrftoken={token}".encode())],
    }
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    sent, pulled = _run_asgi(UploadLimitASGIMiddleware(get_asgi_application()), scope, chunks)
    assert sent[0]["status"] == 200
    assert LIMIT_MESSAGE in b"".join(m.get("body", b"") for m in sent[1:]).decode()
    assert len(pulled) < len(chunks)
    _assert_nothing_stored(limited)
