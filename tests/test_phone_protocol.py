"""A phone's browser on the agent websocket (devices.consumers, devices.phone_protocol), in-process.

The phone is added with the "Add a phone" page and paired through the pairing endpoint with the
code of its QR link, as its page does; then the websocket is driven through the real ASGI
application (Channels' WebsocketCommunicator) as tests/test_agent_protocol.py drives an agent's:
the token comes in hello (no header), hello declares backend and threads, layer stats carry the
browser's timing metadata, and its table is keyed by runtime, version, backend and threads.
The real browser against a real server is tests/test_phone_browser.py.
"""
from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import reverse

from devices.agent import protocol as p
from devices.lut import DatabaseLatencyTable
from devices.measure.signature import LayerSignature
from devices.models import Device, LatencyEntry, MeasurementRequest
from devices.pairing import revoke
from devices.requests import device_table
from tests.test_agent_protocol import SPEC, STATS, make_request, signatures  # noqa: F401 (a fixture)
from webapp.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services, pytest.mark.usefixtures("media")]

ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")
TIMEOUT = 5
WEB_VERSION = "1.31.1"
TIMING = {"timer_resolution_ms": 0.1, "calls_per_batch": 40, "overhead_ms": 0.05}


@pytest.fixture(autouse=True)
def _fast_poll(settings):
    settings.AGENT_POLL_SECONDS = 0.05


@pytest.fixture
def phone(client, owner) -> Device:
    client.force_login(owner)
    response = client.post(reverse("phone_add"), {"name": "Pixel 8", "description": ""})
    assert response.status_code == 200
    device = Device.objects.get(owner=owner, name="Pixel 8")
    device.pairing_url = re.search(r'id="pairing-url">([^<]+)<', response.content.decode()).group(1)
    return device


@pytest.fixture
def token(phone) -> str:
    code = phone.pairing_url.split("#pair=", 1)[1]
    answer = Client().post("/api/v1/agent/pair", {"code": code, "facts": {"user_agent": "test"}},
                           content_type="application/json")
    assert answer.status_code == 200, answer.content
    return answer.json()["token"]


def browser() -> WebsocketCommunicator:
    """A browser's socket: no Authorization header (a browser cannot set one)."""
    return WebsocketCommunicator(application, "/ws/agent/", headers=[ORIGIN, HOST])


def hello_message(token, **changes) -> dict:
    message = {"type": "hello", "protocol": 1, "agent": "netadapt-browser/1", "runtime": "onnxruntime-web",
               "runtime_version": WEB_VERSION, "backend": "wasm", "threads": 1, "token": token,
               "facts": {"user_agent": "Mozilla/5.0 (Linux; Android 14)", "secure_context": False,
                         "timer_resolution_ms": 0.1}}
    message.update(changes)
    return message


async def paired_socket(token) -> WebsocketCommunicator:
    socket = browser()
    assert (await socket.connect(timeout=TIMEOUT))[0]
    await socket.send_json_to(hello_message(token))
    welcome = await socket.receive_json_from(timeout=TIMEOUT)
    assert welcome["type"] == "welcome", welcome
    return socket


def refresh(instance):
    instance.refresh_from_db()
    return instance


in_db = sync_to_async


def test_the_token_in_hello_pairs_the_socket_and_the_browser_facts_are_kept(phone, token):
    async def scenario():
        socket = browser()
        assert (await socket.connect(timeout=TIMEOUT))[0]  # accepted: the token comes next
        assert (await in_db(refresh)(phone)).status == "offline"
        await socket.send_json_to(hello_message(token))
        welcome = await socket.receive_json_from(timeout=TIMEOUT)
        assert welcome == {"type": "welcome", "device": phone.pk, "name": "Pixel 8", "runtime": "onnxruntime-web",
                           "threads": 1, "heartbeat_seconds": p.HEARTBEAT_SECONDS}
        device = await in_db(refresh)(phone)
        assert device.status == "online"
        assert device.facts["onnxruntime_web"] == WEB_VERSION and device.facts["backend"] == "wasm"
        assert device.facts["threads"] == 1 and "onnxruntime" not in device.facts
        await socket.disconnect()

    async_to_sync(scenario)()
    assert refresh(phone).status == "offline"


@pytest.mark.parametrize("first", [
    hello_message("not-a-token"), hello_message(None), {"type": "heartbeat"}, "not json"],
    ids=["unknown token", "no token", "heartbeat first", "not json"])
def test_a_socket_without_a_valid_token_in_hello_is_closed_with_4001(phone, token, first):
    async def scenario():
        socket = browser()
        assert (await socket.connect(timeout=TIMEOUT))[0]
        if isinstance(first, str):
            await socket.send_to(text_data=first)
        else:
            await socket.send_json_to(first)
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error" and "hello.token" in answer["message"]
        assert await socket.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": p.CLOSE_REVOKED}
        await socket.disconnect()

    async_to_sync(scenario)()
    device = refresh(phone)
    assert device.status == "offline" and device.last_seen is None


def test_a_socket_that_never_says_hello_is_closed(phone, token, monkeypatch):
    from devices import consumers

    monkeypatch.setattr(consumers, "TOKEN_WAIT_SECONDS", 0.2)

    async def scenario():
        socket = browser()
        assert (await socket.connect(timeout=TIMEOUT))[0]
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error" and "within 0.2 s" in answer["message"]
        assert await socket.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": p.CLOSE_REVOKED}
        await socket.disconnect()

    async_to_sync(scenario)()


def test_a_revoked_phone_is_refused_in_hello_and_disconnected_while_open(phone, token):
    async def scenario():
        socket = await paired_socket(token)
        await in_db(revoke)(phone)
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error" and "revoked" in answer["message"]
        assert await socket.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": p.CLOSE_REVOKED}
        await socket.disconnect()
        again = browser()
        assert (await again.connect(timeout=TIMEOUT))[0]
        await again.send_json_to(hello_message(token))
        assert (await again.receive_json_from(timeout=TIMEOUT))["type"] == "error"
        assert await again.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": p.CLOSE_REVOKED}
        await again.disconnect()

    async_to_sync(scenario)()


@pytest.mark.parametrize("changes, words", [
    ({"runtime": "onnxruntime"}, "runtime must be 'onnxruntime-web'"),
    ({"backend": "webgl"}, "backend"),
    ({"backend": None, "facts": {}}, "backend"),
    ({"threads": 0}, "threads"),
    ({"threads": "many"}, "threads"),
    ({"backend": None, "facts": ["wasm"]}, "backend"),
    ({"backend": ["wasm"]}, "backend"),
], ids=["agent runtime", "unknown backend", "no backend", "zero threads", "threads not a number",
        "facts not an object", "backend not a string"])
def test_a_browser_hello_must_declare_its_runtime_backend_and_threads(phone, token, changes, words):
    async def scenario():
        socket = browser()
        assert (await socket.connect(timeout=TIMEOUT))[0]
        await socket.send_json_to(hello_message(token, **changes))
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error" and words in answer["message"], answer
        await socket.disconnect()

    async_to_sync(scenario)()
    assert refresh(phone).status == "offline"


def test_a_phone_measures_into_its_own_table_keyed_by_backend_and_threads(owner, phone, token, signatures):
    request = make_request(owner, phone, signatures, networks=1, runtime="onnxruntime-web")
    n = len(signatures)

    async def scenario():
        socket = await paired_socket(token)
        offer = await socket.receive_json_from(timeout=TIMEOUT)
        assert offer["type"] == "request" and offer["request"] == request.pk
        assert offer["runtime"] == "onnxruntime-web" and offer["pending"] == n
        # Every layer but the last with its probe (the last as a page that could not probe it).
        await socket.send_json_to({"type": "layers", "request": request.pk, "results": {
            str(i): {**STATS, **TIMING} if i < n - 1 else STATS for i in range(n)}})
        assert (await socket.receive_json_from(timeout=TIMEOUT))["signatures_done"] == n
        await socket.send_json_to({"type": "networks", "request": request.pk, "results": [STATS]})
        assert (await socket.receive_json_from(timeout=TIMEOUT))["status"] == "done"
        await socket.disconnect()

    async_to_sync(scenario)()
    assert refresh(request).status == "done"
    keys = set(LatencyEntry.objects.filter(device=phone).values_list("runtime", "runtime_version", "backend",
                                                                      "threads"))
    assert keys == {("onnxruntime-web", WEB_VERSION, "wasm", 1)}
    # The table a job reads on the phone is that one; another backend's or thread count's is not.
    phone.refresh_from_db()
    table = device_table(phone)
    assert (table.runtime, table.runtime_version, table.backend, table.threads) == (
        "onnxruntime-web", WEB_VERSION, "wasm", 1)
    assert len(table) == LatencyEntry.objects.filter(device=phone).count() > 0
    assert len(DatabaseLatencyTable(phone, "onnxruntime-web", WEB_VERSION, 1, backend="webgpu")) == 0
    assert len(DatabaseLatencyTable(phone, "onnxruntime-web", WEB_VERSION, 2, backend="wasm")) == 0
    # Each entry keeps its probe; an entry whose probe is over half its time drowns in it.
    last = LayerSignature.from_dict(signatures[-1]).key()
    probes = dict(LatencyEntry.objects.filter(device=phone).values_list("signature_key", "overhead_ms"))
    assert probes.pop(last) is None and set(probes.values()) == {TIMING["overhead_ms"]}
    assert TIMING["overhead_ms"] > 0.5 * STATS["min_ms"]
    layers = [LayerSignature.from_dict(s) for s in signatures]
    assert table.drowning(layers) == (len(probes), len(probes))


@pytest.mark.parametrize("bad", [{"timer_resolution_ms": -1}, {"calls_per_batch": 0}, {"overhead_ms": "x"},
                                 {"overhead_ms": True}, {"resolution": 0.1}],
                         ids=["negative resolution", "no calls", "overhead not a number", "overhead a boolean",
                              "unknown field"])
def test_bad_timing_metadata_fails_the_request_and_stores_nothing(owner, phone, token, signatures, bad):
    request = make_request(owner, phone, signatures, networks=1, runtime="onnxruntime-web")

    async def scenario():
        socket = await paired_socket(token)
        assert (await socket.receive_json_from(timeout=TIMEOUT))["request"] == request.pk
        await socket.send_json_to({"type": "layers", "request": request.pk, "results": {"0": {**STATS, **bad}}})
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error" and answer["request"] == request.pk
        assert next(iter(bad)) in answer["message"]
        await socket.disconnect()

    async_to_sync(scenario)()
    request.refresh_from_db()
    assert request.status == "failed" and "invalid layer results" in request.error
    assert not LatencyEntry.objects.filter(device=phone).exists()


def test_a_request_for_other_threads_fails_with_the_phones_threads_named(owner, phone, token, signatures):
    request = MeasurementRequest.objects.get(pk=make_request(owner, phone, signatures, runtime="onnxruntime-web").pk)
    MeasurementRequest.objects.filter(pk=request.pk).update(threads=4)

    async def scenario():
        socket = await paired_socket(token)
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()

    async_to_sync(scenario)()
    request.refresh_from_db()
    assert request.status == "failed" and "1 thread(s)" in request.error and "on 4" in request.error


def test_an_agent_request_is_not_served_by_a_phone(owner, phone, token, signatures):
    request = make_request(owner, phone, signatures, runtime="onnxruntime")

    async def scenario():
        socket = await paired_socket(token)
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()

    async_to_sync(scenario)()
    request.refresh_from_db()
    assert request.status == "failed" and "onnxruntime-web" in request.error


def test_a_phones_table_exports_and_imports_with_its_backend(client, owner, phone, token, signatures):
    from django.core.files.uploadedfile import SimpleUploadedFile

    request = make_request(owner, phone, signatures, networks=1, runtime="onnxruntime-web")

    async def scenario():
        socket = await paired_socket(token)
        assert (await socket.receive_json_from(timeout=TIMEOUT))["request"] == request.pk
        await socket.send_json_to({"type": "layers", "request": request.pk,
                                   "results": {str(i): STATS for i in range(len(signatures))}})
        assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "stored"
        await socket.disconnect()

    async_to_sync(scenario)()
    exported = client.get(reverse("device_lut_export", args=[phone.pk])).content
    assert b'"backend":"wasm"' in exported
    client.post(reverse("phone_add"), {"name": "Second phone", "description": ""})
    second = Device.objects.get(owner=owner, name="Second phone")
    response = client.post(reverse("device_lut_import", args=[second.pk]),
                           {"file": SimpleUploadedFile("t.json", exported, "application/json")})
    assert response.status_code == 302
    rows = set(LatencyEntry.objects.filter(device=second).values_list("runtime", "backend", "signature_key"))
    assert rows == set(LatencyEntry.objects.filter(device=phone).values_list("runtime", "backend", "signature_key"))
    assert {backend for _, backend, _ in rows} == {"wasm"}
