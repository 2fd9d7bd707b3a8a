"""An uploaded image-folder dataset adapts end to end, as a client does it: real uvicorn, a real
Celery worker, the REST API (tests/e2e_support.py; both modes: SQLite and the filesystem broker,
or PostgreSQL and Redis).

A zip of tiny images and a model go up through the API, a small job runs on them in the worker,
and its final network downloads. The servers run with a 1 MB upload limit, so the same server
also answers a chunked upload past the limit, sent over a socket as a client would.
"""
from __future__ import annotations

import http.client
import json
import uuid

import numpy as np
import onnxruntime as ort
import pytest
import torch

from adaptation.netadapt.spec import ArchitectureSpec
from tests.e2e_support import JOB_DEADLINE_S, PRODUCTION, HttpClient, live_app, wait_until
from tests.stored_files import torch_bytes
from tests.test_e2e import PASSWORD, create_user
from tests.user_objects import image_zip

pytestmark = [pytest.mark.slow, pytest.mark.services]
if PRODUCTION:  # committed rows in pytest-django's PostgreSQL test database, read by the servers
    pytestmark.append(pytest.mark.django_db(transaction=True))

LIMIT = 1 << 20
CLASSES = ("circles", "squares", "crosses")
SPEC = ArchitectureSpec("plain_cnn", num_classes=len(CLASSES), in_channels=1, width=0.25, resolution=8)
# A few seconds of fine-tuning: MACs need no measuring, and 36 images of 8 px train in no time.
JOB = {"metric": "macs", "budget_mode": "percent", "budget": 80, "initial_reduction": 0.1,
       "decay": 0.9, "short_term_steps": 5, "long_term_epochs": 0.5, "channel_step": 4,
       "holdout_size": 0.2, "max_iterations": 3}
ENDED = ("finished", "failed", "cancelled")


@pytest.fixture
def app(tmp_path, django_db_blocker, monkeypatch):
    """The live servers (``live_app``) with a 1 MB upload limit."""
    monkeypatch.setenv("NETADAPT_UPLOAD_MAX_BYTES", str(LIMIT))
    with live_app(tmp_path, django_db_blocker) as served:
        yield served


def chunked_upload(port: int, token: str, size: int) -> tuple[int, bytes]:
    """(status, body) of a dataset upload whose archive part is ``size`` bytes, sent with
    chunked transfer encoding (no Content-Length) over a socket."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nhuge\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="resolution"\r\n\r\n8\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="channels"\r\n\r\nauto\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="archive"; filename="huge.zip"\r\n'
            f"Content-Type: application/zip\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():
        yield head
        for _ in range(size // 65536):
            yield bytes(65536)
        yield tail

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", "/api/v1/datasets", body=body(), encode_chunked=True, headers={
            "Authorization": f"Token {token}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_job_on_an_uploaded_zip_runs_to_the_end(app):
    create_user("erin")
    api = HttpClient(app.base_url)
    answer = api.post_json("/api/v1/token", {"username": "erin", "password": PASSWORD})
    assert answer.status == 200, answer.body
    api.token = answer.json()["token"]

    # The dataset: a zip of 3 classes of 12 grey 8-px PNGs, extracted and checked by the checking worker.
    dataset = api.upload_checked("datasets", {"name": "shapes", "resolution": "8", "channels": "auto"},
                                 {"archive": ("shapes.zip", image_zip(classes=CLASSES, per_class=12))}, app)
    assert dataset["status"] == "ready", dataset
    assert dataset["summary"]["class_names"] == sorted(CLASSES) and dataset["summary"]["in_channels"] == 1

    # The model: plain_cnn's state dict for 3 classes of 1-channel 8-px images.
    torch.manual_seed(0)
    model = api.upload_checked("models", {
        "name": "shapes cnn", "arch": SPEC.arch, "width": SPEC.width, "num_classes": SPEC.num_classes,
        "in_channels": SPEC.in_channels, "resolution": SPEC.resolution},
        {"file": ("shapes.pt", torch_bytes(SPEC.build().state_dict()))}, app)
    assert model["status"] == "ready", model
    device = next(d for d in api.get("/api/v1/devices").json() if d["system"])

    answer = api.post_json("/api/v1/jobs", {"model": model["id"], "dataset": dataset["id"],
                                            "device": device["id"], **JOB})
    assert answer.status == 201, answer.body
    job_id = answer.json()["id"]

    app.start_worker()
    def ended():
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["status"] in ENDED else None

    job = wait_until(ended, f"job {job_id} to end", app, JOB_DEADLINE_S)
    assert (job["status"], job["error"]) == ("finished", ""), job
    numbers = [it["number"] for it in job["iterations"]]
    assert numbers[0] == -1 and len(numbers) >= 2 and numbers[1:] == list(range(len(numbers) - 1))
    assert job["final_iteration"] == numbers[-1]
    assert job["result"]["budget_met"] or job["result"]["iterations"] == JOB["max_iterations"]

    answer = api.get(f"/api/v1/jobs/{job_id}/iterations/{numbers[-1]}/download", format="onnx")
    assert answer.status == 200, answer.body[:500]
    session = ort.InferenceSession(answer.body, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    output = session.run(None, {session.get_inputs()[0].name: image})[0]
    assert output.shape == (1, len(CLASSES)) and np.isfinite(output).all()

    # The same server answers a chunked upload past its limit with the limit, not "required".
    status, body = chunked_upload(app.port, api.token, 3 * LIMIT)
    assert status == 400, body[:500]
    assert json.loads(body) == {"archive": ["The file is larger than the 1 MB limit."]}
    assert [d["name"] for d in api.get("/api/v1/datasets").json() if not d["builtin"]] == ["shapes"]
