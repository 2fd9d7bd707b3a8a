"""Uploads are checked by the checking worker, within bounds, never in the web process: real
uvicorn, the real checking worker (``webapp.serve``'s command), the REST API (tests/e2e_support.py;
both modes: SQLite and the filesystem broker, or PostgreSQL and Redis).

One server, run with a 128 MB check ceiling (``NETADAPT_CHECK_MEMORY_MB``, its minimum), takes
three archives through ``POST /api/v1/datasets``, each answered 202 "checking" at once:

- the pixel bomb (six one-bit 10000x10000 PNGs, a few KB): rejected by its first image's header;
- 1,200 one-pixel PNGs at 224 px (1,000 took uvicorn to 3.4 GB when it decoded them itself):
  ready, the checking child's peak memory (its VmHWM, recorded on the row) under the ceiling;
- six 5000x5000 RGB images (within every byte and pixel limit): the child runs into the ceiling,
  and the dataset is rejected with that reason and no files.

Meanwhile the web process's peak memory does not move.
"""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from adaptation.models import Dataset
from tests.e2e_support import PRODUCTION, HttpClient, live_app
from tests.stored_files import files_under
from tests.test_e2e import PASSWORD, create_user

pytestmark = [pytest.mark.slow, pytest.mark.services]
if PRODUCTION:  # committed rows in pytest-django's PostgreSQL test database, read by the servers
    pytestmark.append(pytest.mark.django_db(transaction=True))

MiB = 1 << 20
CEILING_MB = 128
#: What the web process's peak may grow by while it takes the uploads (it grew by 1.2 and 3.4 GB
#: when it decoded the first two archives itself).
WEB_GROWTH_BYTES = 48 * MiB


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def memory_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (bytes) of a live process."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


@pytest.fixture
def app(tmp_path, django_db_blocker, monkeypatch):
    """The live servers with a 128 MB ceiling on each dataset check."""
    monkeypatch.setenv("NETADAPT_CHECK_MEMORY_MB", str(CEILING_MB))
    with live_app(tmp_path, django_db_blocker) as served:
        yield served


def test_archives_are_checked_by_the_worker_within_the_ceiling(app):
    bomb = zip_of({f"{c}/{i}.png": png(Image.new("1", (10000, 10000))) for c in ("a", "b") for i in range(3)})
    tiny = zip_of({f"{c}/{i}.png": png(Image.new("L", (1, 1), 128)) for c in ("a", "b") for i in range(600)})
    gradient = np.tile(np.arange(5000, dtype=np.uint16)[None, :, None] % 256, (5000, 1, 3)).astype(np.uint8)
    large = zip_of({f"{c}/{i}.png": png(Image.fromarray(gradient)) for c in ("a", "b") for i in range(3)})
    assert len(bomb) < 10_000 and len(tiny) < 300_000 and len(large) < 2_000_000

    create_user("gus")
    api = HttpClient(app.base_url)
    api.token = api.post_json("/api/v1/token", {"username": "gus", "password": PASSWORD}).json()["token"]
    assert api.get("/api/v1/datasets").status == 200  # the web process has served the API once
    web = memory_of(app.web.process.pid)

    def upload(name: str, archive: bytes) -> dict:
        return api.upload_checked("datasets", {"name": name, "resolution": "224", "channels": "auto"},
                                  {"archive": (f"{name}.zip", archive)}, app)

    refused = upload("bomb", bomb)
    assert refused["status"] == "rejected", refused
    assert refused["error"] == ("Rejected: a/0.png: the image is 10000x10000 (100,000,000 pixels); "
                                "at most 25,000,000 pixels per image")

    accepted = upload("tiny", tiny)
    assert accepted["status"] == "ready", accepted
    assert accepted["summary"]["sizes"] and sum(accepted["summary"]["sizes"].values()) == 1200
    peak = Dataset.objects.get(pk=accepted["id"]).check_peak_bytes  # the child's VmHWM
    assert 0 < peak < CEILING_MB * MiB

    killed = upload("large", large)
    assert killed["status"] == "rejected", killed
    assert killed["error"] == (f"Rejected: checking the archive needed more than {CEILING_MB}.0 MB of "
                               "memory; use fewer or smaller images")
    assert Dataset.objects.get(pk=killed["id"]).check_peak_bytes < CEILING_MB * MiB

    after = memory_of(app.web.process.pid)
    assert after["VmHWM"] - web["VmHWM"] < WEB_GROWTH_BYTES, (web, after)
    # Only the accepted dataset's images are on disk: no zip, no folder of the rejected ones.
    folder = Dataset.objects.get(pk=accepted["id"]).archive.name
    stored = files_under(app.media / "datasets")
    assert stored and all(name.startswith(folder.removeprefix("datasets/") + "/") for name in stored), stored[:5]
