"""Security probes of the HTTP and websocket surface: one case per attack.

- Hostile JSON on every JSON endpoint (REST API, agent pairing, look-up-table import, page
  import) is a 400 naming the problem and stores nothing; on the agent's websocket it closes
  the connection with a code and a reason, and the server keeps serving; the job page's socket
  reads nothing and closes when sent anything.
- What no view expects answers a JSON 500 without details, even with DEBUG on.
- DEBUG is off unless asked for; embedded mode keeps a generated SECRET_KEY in its data folder
  (0600, the same for processes starting together); the live server serves its static files
  and plain error pages.
- CSV reports neutralise cells a spreadsheet would run as formulas.
- Websocket origins are checked with scheme, host and port, on both sockets.
"""
from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from adaptation.models import Job, ModelUpload
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation.downloads import FORMULA_TRIGGERS, csv_cell
from devices.agent import protocol as p
from devices.models import Device, LatencyEntry
from devices.pairing import new_pairing, redeem
from tests.e2e_support import PRODUCTION
from tests.stored_files import torch_bytes
from tests.user_objects import add_device
from webapp.asgi import application

REPO = Path(__file__).resolve().parents[1]
API = "/api/v1"
TIMEOUT = 5
SPEC = ArchitectureSpec("plain_cnn", num_classes=10, in_channels=1, width=0.25, resolution=8)
FORMULA = "=2+5+cmd|' /C calc'!A6"

pytestmark = pytest.mark.django_db


# --------------------------------------------------------------------------- hostile JSON bodies

#: (body, what the answer must say) for each way a JSON body attacks or is simply wrong.
HOSTILE_BODIES = {
    "30,000 nested arrays": (b"[" * 30_000, "nested deeper than 32 levels"),
    "12,000 nested objects": (b'{"a":' * 12_000, "nested deeper than 32 levels"),  # under pairing's 64 KB
    "33 levels, closed": (b"[" * 33 + b"]" * 33, "nested deeper than 32 levels"),
    "invalid UTF-8": (b'{"username": "\xff\xfe", "code": "\xc3("}', "not UTF-8"),
    "NaN": (b'{"budget": NaN, "threads": NaN, "code": NaN}', "NaN is not a JSON number"),
    "Infinity": (b'{"budget": -Infinity, "threads": Infinity}', "Infinity is not a JSON number"),
    "float overflow": (b'{"budget": 1e999, "threads": 1e999}', "the number 1e999 is too large"),
    "5,000-digit integer": (b'{"budget": ' + b"9" * 5000 + b"}", "a number of 5000 characters is too long"),
    "unpaired surrogate": (b'{"name": "\\ud800", "username": "\\udfff", "code": "\\ud800"}',
                           "unpaired surrogate"),
    "truncated": (b'{"name": ', "not valid JSON"),
}
#: Valid JSON of the wrong shape: a 400 from the endpoint's own validation.
WRONG_SHAPES = {
    "array at top level": b"[1, 2]",
    "string at top level": b'"text"',
    "null at top level": b"null",
    "number at top level": b"42",
    "wrong types": json.dumps({"username": ["alice"], "password": {"p": 1}, "code": [1], "facts": [1],
                               "model": {"id": 1}, "dataset": [1], "device": True, "budget": [0.5],
                               "name": ["x"], "threads": {"n": 1}, "kind": ["agent"], "job": [1],
                               "iteration": {"n": 0}, "format": ["netadapt-lut"]}).encode(),
    "huge integers": json.dumps({"model": 10**30, "dataset": 10**30, "device": 10**30, "threads": 10**30,
                                 "job": 10**30, "iteration": 10**30, "budget": 10**30}).encode(),
}
ENDPOINTS = ["token", "agent pair", "jobs", "devices", "lut import", "measure"]


@pytest.fixture
def phone(api) -> int:
    """An agent device of the owner's, created through the API."""
    response = api.post(f"{API}/devices", {"name": "phone"}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def post_endpoint(api: APIClient, endpoint: str, body: bytes, device: int):
    """POST ``body`` as application/json to the endpoint, as its client would (no session)."""
    path = {"token": "token", "agent pair": "agent/pair", "jobs": "jobs", "devices": "devices",
            "lut import": f"devices/{device}/lut", "measure": f"devices/{device}/measure"}[endpoint]
    client = APIClient() if endpoint in ("token", "agent pair") else api
    return client.generic("POST", f"{API}/{path}", body, content_type="application/json")


def stored_counts() -> tuple[int, ...]:
    return (Job.objects.count(), Device.objects.count(), LatencyEntry.objects.count(), Token.objects.count())


@pytest.mark.parametrize("case", HOSTILE_BODIES)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_hostile_json_is_a_400_that_names_the_problem(api, owner, phone, endpoint, case):
    body, message = HOSTILE_BODIES[case]
    before = stored_counts()
    response = post_endpoint(api, endpoint, body, phone)
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/json"
    assert message in response.content.decode(), response.content[:300]
    assert stored_counts() == before


@pytest.mark.parametrize("case", WRONG_SHAPES)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_json_of_the_wrong_shape_is_a_400(api, owner, phone, endpoint, case):
    before = stored_counts()
    response = post_endpoint(api, endpoint, WRONG_SHAPES[case], phone)
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/json" and response.json()
    assert stored_counts() == before


def test_no_api_view_parses_json_without_the_limits():
    """Views that name their parsers (DRF's token view does) must not bring back DRF's JSONParser."""
    from django.urls import get_resolver
    from rest_framework.parsers import JSONParser

    from webapp.api_errors import SafeJSONParser

    views = [pattern.callback for pattern in get_resolver("webapp.api_urls").url_patterns]
    classes = [getattr(view, "cls", None) for view in views]
    assert len([c for c in classes if c is not None]) >= 10
    for view_class in filter(None, classes):
        for parser in view_class.parser_classes:
            assert not issubclass(parser, JSONParser) or issubclass(parser, SafeJSONParser), (view_class, parser)


def test_a_json_body_over_the_memory_limit_is_a_400(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = api.generic("POST", f"{API}/jobs", json.dumps({"name": "x" * 2000}), content_type="application/json")
    assert response.status_code == 400 and "larger than 1000 bytes" in response.json()["detail"], response.content
    assert not Job.objects.exists()


def test_the_lut_import_page_names_a_deeply_nested_file(client, owner, phone):
    client.force_login(owner)
    upload = SimpleUploadedFile("lut.json", b"[" * 30_000, "application/json")
    response = client.post(reverse("device_lut_import", args=[phone]), {"file": upload})
    assert response.status_code == 200
    assert "nested deeper than 32 levels" in response.content.decode()
    assert not LatencyEntry.objects.exists()


def test_an_unexpected_api_error_is_a_json_500_without_details_even_with_debug(api, owner, settings, monkeypatch):
    """A bug stands in for every unknown cause: the answer reveals nothing, the log has it."""
    import adaptation.api_jobs

    def broken(user, id):
        raise RuntimeError("secret detail /srv/netadapt/settings.py")

    monkeypatch.setattr(adaptation.api_jobs, "get_job_for_user", broken)
    settings.DEBUG = True
    response = api.get(f"{API}/jobs/1")
    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    assert "unexpected error" in response.json()["detail"]
    assert "secret" not in response.content.decode() and "Traceback" not in response.content.decode()


def test_an_unexpected_error_of_the_agent_pairing_endpoint_is_a_json_500_without_details(monkeypatch):
    """The agent's endpoints are plain Django views under /api/: the same answer as DRF's."""
    import devices.agent_views

    def broken(code, facts):
        raise RuntimeError("secret detail /srv/netadapt/settings.py")

    monkeypatch.setattr(devices.agent_views, "redeem", broken)
    response = Client(raise_request_exception=False).post(
        f"{API}/agent/pair", json.dumps({"code": "ABCDE-FGHJK"}), content_type="application/json")
    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    assert "unexpected error" in response.json()["detail"] and "secret" not in response.content.decode()


@pytest.mark.parametrize("path", ["jobs/99999999999999999999999", "models/99999999999999999999999",
                                  "devices/99999999999999999999999",
                                  "jobs/99999999999999999999999/iterations/-99999999999999999999/download"])
def test_an_id_beyond_the_database_range_is_a_404(api, path):
    response = api.get(f"{API}/{path}")
    assert response.status_code == 404, response.content[:300]


# --------------------------------------------------------------------------- websockets: messages


def host_headers(origin: bytes = b"http://localhost", host: bytes = b"localhost") -> list[tuple[bytes, bytes]]:
    return [(b"origin", origin), (b"host", host)]


def session_cookie(user) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return (b"cookie", f"{name}={client.cookies[name].value}".encode())


def agent_token(owner) -> str:
    device = add_device(owner, name="Pi")
    code, _ = new_pairing(device)
    return redeem(code, {"os": "Linux"})[1]


def agent_socket(token: str, headers=None) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, "/ws/agent/", headers=[
        *(host_headers() if headers is None else headers), (b"authorization", f"Token {token}".encode())])


async def said_hello(token: str) -> WebsocketCommunicator:
    socket = agent_socket(token)
    assert (await socket.connect(timeout=TIMEOUT))[0]
    await socket.send_json_to({"type": "hello", "protocol": 1, "agent": "probe", "runtime": "onnxruntime",
                               "runtime_version": "1.0", "facts": {}})
    assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "welcome"
    return socket


FRAMES = {
    "30,000 nested arrays": ("[" * 30_000, "nested deeper than 32 levels"),
    "30,000 nested objects": ('{"a":' * 30_000, "nested deeper than 32 levels"),
    "invalid UTF-8 (binary frame)": (b'{"type": "heartbeat", "x": "\xff"}', "messages are JSON text frames"),
    "NaN": ('{"type": "networks", "request": 1, "results": [NaN]}', "NaN is not a JSON number"),
    "float overflow": ('{"type": "heartbeat", "x": 1e999}', "too large"),
    "5,000-digit integer": ('{"type": "layers", "request": ' + "9" * 5000 + "}", "too long"),
    "unpaired surrogate": ('{"type": "heartbeat", "x": "\\ud800"}', "unpaired surrogate"),
    "array at top level": ("[1, 2]", 'a JSON object with a string "type"'),
    "overlong message": ('{"type": "heartbeat", "x": "' + "a" * p.MAX_MESSAGE_CHARS + '"}', "message longer than"),
}


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", FRAMES)
def test_a_hostile_agent_frame_closes_the_connection_with_a_reason(owner, settings, case):
    settings.AGENT_POLL_SECONDS = 0.05
    frame, reason = FRAMES[case]
    token = agent_token(owner)

    async def scenario():
        socket = await said_hello(token)
        await socket.send_to(**({"bytes_data": frame} if isinstance(frame, bytes) else {"text_data": frame}))
        closed = await socket.receive_output(timeout=TIMEOUT)
        assert closed["type"] == "websocket.close" and closed["code"] == p.CLOSE_MALFORMED
        assert reason in closed["reason"] and len(closed["reason"].encode()) <= p.MAX_CLOSE_REASON_BYTES
        again = await said_hello(token)  # the process serves the next connection
        await again.send_json_to({"type": "heartbeat"})
        assert await again.receive_nothing(timeout=0.2)
        await again.disconnect()

    async_to_sync(scenario)()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("frame", ["[" * 30_000, '{"type": "subscribe", "job": 1}', b"\xff\x00"])
def test_the_job_socket_closes_when_sent_anything(owner, make_job, frame):
    job = make_job(owner)
    cookie = session_cookie(owner)

    async def scenario():
        socket = WebsocketCommunicator(application, f"/ws/jobs/{job.pk}/", headers=[*host_headers(), cookie])
        assert (await socket.connect(timeout=TIMEOUT))[0]
        assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "snapshot"
        await socket.send_to(**({"bytes_data": frame} if isinstance(frame, bytes) else {"text_data": frame}))
        closed = await socket.receive_output(timeout=TIMEOUT)
        assert closed["type"] == "websocket.close" and closed["code"] == 1003 and "reads no messages" in closed["reason"]

    async_to_sync(scenario)()


# --------------------------------------------------------------------------- websockets: origins

ORIGINS = {
    "same host and port": (b"http://localhost:8000", b"localhost:8000", True),
    "another port": (b"http://localhost:9999", b"localhost:8000", False),
    "default port against an explicit one": (b"http://localhost", b"localhost:8000", False),
    "another host": (b"http://evil.example:8000", b"localhost:8000", False),
    "a host that ends like ours": (b"http://evillocalhost:8000", b"localhost:8000", False),
    "https page, plain connection": (b"https://localhost:8000", b"localhost:8000", False),
    "missing origin": (None, b"localhost:8000", False),
    "null origin": (b"null", b"localhost:8000", False),
    "missing host": (b"http://localhost:8000", None, False),
    "host not allowed": (b"http://evil.example:8000", b"evil.example:8000", False),
}


def origin_headers(case: str) -> list[tuple[bytes, bytes]]:
    origin, host, _ = ORIGINS[case]
    return [*([(b"origin", origin)] if origin else []), *([(b"host", host)] if host else [])]


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", ORIGINS)
def test_the_job_socket_checks_scheme_host_and_port_of_the_origin(owner, make_job, case):
    job = make_job(owner)
    cookie = session_cookie(owner)

    async def scenario():
        socket = WebsocketCommunicator(application, f"/ws/jobs/{job.pk}/", headers=[*origin_headers(case), cookie])
        connected, _ = await socket.connect(timeout=TIMEOUT)
        assert connected is ORIGINS[case][2]
        await socket.disconnect()

    async_to_sync(scenario)()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", ORIGINS)
def test_the_agent_socket_checks_scheme_host_and_port_of_the_origin(owner, case):
    token = agent_token(owner)

    async def scenario():
        socket = agent_socket(token, origin_headers(case))
        connected, _ = await socket.connect(timeout=TIMEOUT)
        assert connected is ORIGINS[case][2]
        await socket.disconnect()

    async_to_sync(scenario)()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("origin, allowed", [
    (b"https://studio.example", True), (b"https://studio.example:443", True),
    (b"https://studio.example:8443", False), (b"http://studio.example", False),
    (b"https://lab.studio.example", False)])
def test_a_tls_proxy_and_trusted_origins_are_matched_exactly(owner, settings, origin, allowed):
    """Behind a TLS proxy (SECURE_PROXY_SSL_HEADER) the site is https; CSRF_TRUSTED_ORIGINS adds
    exact origins (scheme, host, port), here another name of the same server."""
    settings.ALLOWED_HOSTS = ["localhost"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.CSRF_TRUSTED_ORIGINS = ["https://studio.example"]
    token = agent_token(owner)

    async def scenario():
        socket = agent_socket(token, [(b"origin", origin), (b"host", b"localhost"),
                                      (b"x-forwarded-proto", b"https")])
        assert (await socket.connect(timeout=TIMEOUT))[0] is allowed
        await socket.disconnect()
        own = agent_socket(token, [(b"origin", b"https://localhost"), (b"host", b"localhost"),
                                   (b"x-forwarded-proto", b"https")])
        assert (await own.connect(timeout=TIMEOUT))[0]
        await own.disconnect()

    async_to_sync(scenario)()


# --------------------------------------------------------------------------- CSV reports


@pytest.fixture
def job_of_the_api(api, owner, system_device, digits_dataset, media, sent_run_job, checks_in_process) -> Job:
    """A job created the way users create one: a model uploaded (and checked, in this process) and
    a job started through the API."""
    torch.manual_seed(0)
    upload = SimpleUploadedFile("net.pt", torch_bytes(SPEC.build().state_dict()))
    response = api.post(f"{API}/models", {"name": "net", "source": "builtin", "arch": "plain_cnn", "width": 0.25,
                                          "num_classes": 10, "in_channels": 1, "resolution": 8, "file": upload},
                        format="multipart")
    assert response.status_code == 202, response.content
    assert ModelUpload.objects.get(pk=response.json()["id"]).status == "ready"
    response = api.post(f"{API}/jobs", {"model": response.json()["id"], "dataset": digits_dataset.pk,
                                        "device": system_device.pk, "budget": 50}, format="json")
    assert response.status_code == 201, response.content
    return Job.objects.get(pk=response.json()["id"])


@pytest.mark.parametrize("group", [FORMULA, "+1+cmd", "-2+3", "@SUM(A1:A2)", "\t=1+1", "\r=1+1"])
def test_a_formula_in_a_text_cell_is_neutralised(group):
    assert csv_cell(group) == "'" + group


@pytest.mark.parametrize("value", ["features.0", "n12", "", 0.5, 1500])
def test_plain_text_and_our_numbers_are_written_as_they_are(value):
    assert csv_cell(value) == value
    assert csv_cell(-1) == -1 and csv_cell(-0.5) == -0.5  # the original's iteration, a value


def test_the_csv_report_of_a_job_made_through_the_api_has_no_formula_cell(api, job_of_the_api):
    text = api.get(f"{API}/jobs/{job_of_the_api.pk}/report?format=csv").content.decode()
    header, *_ = list(csv.reader(io.StringIO(text)))
    assert header[0] == "iteration"
    for row in csv.DictReader(io.StringIO(text)):
        for cell in row.values():
            assert not cell.startswith(FORMULA_TRIGGERS) or float(cell) < 0, cell


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_formula_as_an_onnx_node_name_reaches_the_csv_report_neutralised(api, media, workers, system_device,
                                                                           digits_dataset, checks_in_process):
    """The way users cause it: the Conv nodes of an uploaded ONNX file are named like formulas,
    their names become the prunable groups' names, a job shrinks one and the report names it."""
    import onnx

    from adaptation.netadapt import onnx_import
    from tests.test_onnx_import import PLAIN, onnx_bytes, trained_like

    torch.manual_seed(0)
    graph = onnx.load_from_string(onnx_bytes(trained_like(PLAIN.build()), PLAIN.example_input(),
                                             dynamic_axes={"input": {0: "batch"}}))
    for number, node in enumerate(graph.graph.node):
        if node.op_type == "Conv":
            node.name = f"{FORMULA[:-1]}{number}"
    upload = SimpleUploadedFile("formulas.onnx", graph.SerializeToString())
    response = api.post(f"{API}/models", {"name": "formulas", "file": upload}, format="multipart")
    assert response.status_code == 202, response.content
    assert api.get(f"{API}/models/{response.json()['id']}").json()["status"] == "ready"
    response = api.post(f"{API}/jobs", {
        # MACs, not latency: a 0.02 ms network's table noise can leave no group meeting a 4% cut.
        "model": response.json()["id"], "dataset": digits_dataset.pk, "device": system_device.pk, "budget": 95,
        "metric": "macs", "initial_reduction": 0.04, "decay": 0.9, "short_term_steps": 3, "long_term_epochs": 0,
        "max_iterations": 1, "holdout_size": 0.15}, format="json")
    assert response.status_code == 201, response.content
    onnx_import._CACHE.clear()  # the worker converts the stored file again
    job = workers.drive(Job.objects.get(pk=response.json()["id"]))
    assert job.status == "finished", job.error
    text = api.get(f"{API}/jobs/{job.pk}/report?format=csv").content.decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    chosen = rows[1]["chosen_group"]
    assert chosen and not chosen.startswith(FORMULA_TRIGGERS)
    assert "cmd|" not in chosen or chosen.startswith("'" + FORMULA[:-1])  # the node's name, quoted
    for cell in (cell for row in rows for cell in row.values()):
        if cell.startswith(FORMULA_TRIGGERS):  # only a negative number may, and it is a value
            assert cell.startswith("-") and float(cell) < 0, cell


# --------------------------------------------------------------------------- DEBUG and SECRET_KEY

_PRINT_KEY = "import json, webapp.settings as s; print(json.dumps({'debug': s.DEBUG, 'key': s.SECRET_KEY}))"


def settings_of(data_dir: Path, **env) -> subprocess.Popen:
    """A fresh interpreter importing webapp.settings in embedded mode with ``data_dir``."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "DJANGO_SETTINGS_MODULE")}
    clean.update({"PYTHONPATH": str(REPO), "NETADAPT_DATA_DIR": str(data_dir), **env})
    return subprocess.Popen([sys.executable, "-c", _PRINT_KEY], cwd=REPO, env=clean, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def printed(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_embedded_mode_runs_without_debug_and_keeps_a_private_generated_key(tmp_path):
    first = printed(settings_of(tmp_path / "data"))
    assert first["debug"] is False
    key_file = tmp_path / "data" / "secret_key"
    assert key_file.read_text().strip() == first["key"] and len(first["key"]) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert printed(settings_of(tmp_path / "data"))["key"] == first["key"]  # the next start reuses it
    assert printed(settings_of(tmp_path / "other"))["key"] != first["key"]  # generated, not a constant
    assert printed(settings_of(tmp_path / "data", SECRET_KEY="from-env"))["key"] == "from-env"
    assert printed(settings_of(tmp_path / "data", DEBUG="1"))["debug"] is True


def test_processes_starting_together_agree_on_the_generated_key(tmp_path):
    processes = [settings_of(tmp_path / "data") for _ in range(6)]
    keys = {printed(process)["key"] for process in processes}
    assert len(keys) == 1 and (tmp_path / "data" / "secret_key").read_text().strip() in keys
    assert [p.name for p in (tmp_path / "data").iterdir() if "secret_key" in p.name] == ["secret_key"]


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_live_server_serves_static_files_and_plain_error_pages(live_app):
    """uvicorn with DEBUG off, as ``make run`` starts it: CSS and JS come from WhiteNoise, an unknown
    page is the plain 404 page, and hostile JSON is a 400 without Django's debug page."""
    def fetch(path: str, body: bytes | None = None) -> tuple[int, str, str]:
        request = urllib.request.Request(live_app.url(path), data=body,
                                         headers={"Content-Type": "application/json"} if body else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers["Content-Type"], error.read().decode()

    status, kind, text = fetch("/static/css/app.css")
    assert status == 200 and kind.startswith("text/css") and "{" in text
    status, kind, _ = fetch("/static/vendor/chart.js/chart.umd.js")
    assert status == 200 and "javascript" in kind
    status, kind, text = fetch("/no/such/page/")
    assert status == 404 and "Not found" in text
    assert "URLconf" not in text and "Traceback" not in text and "DEBUG" not in text
    for path in ("/api/v1/token", "/api/v1/agent/pair"):
        status, kind, text = fetch(path, b"[" * 30_000)
        assert status == 400 and kind == "application/json" and "nested deeper" in text
    assert "Traceback" not in live_app.logs_text()
    if not PRODUCTION:
        assert (live_app.media.parent / "secret_key").exists()  # generated by the server's first start
