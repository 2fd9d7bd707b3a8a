"""The agent program's server side and its pure parts, in-process (fast).

- ``ws/agent/`` (devices.consumers.AgentConsumer) through the real ASGI application with Channels'
  WebsocketCommunicator: tokens refused before accept, hello/heartbeat/status, one request at a
  time, results stored, foreign request ids and unusable messages answered with errors, frames
  that are not messages closing the connection with a reason, a revoked token disconnected. pytest-asyncio is not installed: each test runs its coroutine with
  ``async_to_sync`` (as tests/test_consumer.py does).
- The HTTP endpoints (pairing, a request's files, the agent download).
- The agent package: pure (no torch, no Django), the server's statistics file itself, the
  server's protocol defaults, its timing loop, state file and reconnection backoff.
The real agent process against a real server is tests/test_agent.py.
"""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone

from adaptation.netadapt.architectures import describe_network
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation.network_files import network_files
from devices.agent import protocol as p
from devices.measure import MeasureProtocol
from devices.measure.tracing import trace_layers
from devices.models import Device, LatencyEntry, MeasurementRequest
from devices.pairing import new_pairing, redeem, revoke
from devices.presence import mark_silent_devices_offline, silent_seconds
from devices.requests import open_request, store_layer_results
from tests.leaving_clients import LeavingClient
from tests.user_objects import add_device
from webapp.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services, pytest.mark.usefixtures("media")]

REPO = Path(__file__).resolve().parents[1]
ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")
TIMEOUT = 5
VERSION = ort.__version__
SPEC = ArchitectureSpec("plain_cnn", 10, 1, 0.25, 8)
STATS = {"n": 200, "min_ms": 0.01, "p10_ms": 0.011, "median_ms": 0.012, "p90_ms": 0.015,
         "mean_ms": 0.0125, "std_ms": 0.001}


@pytest.fixture(autouse=True)
def _fast_poll(settings):
    settings.AGENT_POLL_SECONDS = 0.05


@pytest.fixture
def agent_device(owner):
    return add_device(owner, name="Pi 5", threads=1)


@pytest.fixture
def token(agent_device):
    code, _ = new_pairing(agent_device)
    return redeem(code, {"os": "Linux"})[1]


@pytest.fixture(scope="module")
def signatures():
    torch.manual_seed(0)
    model = SPEC.build().eval()
    return [layer.signature.to_dict() for layer in trace_layers(model, SPEC.example_input())]


def make_request(owner, device, signatures, networks=1, runtime="onnxruntime") -> MeasurementRequest:
    """A request as a job opens it: the networks' ONNX files exported (adaptation.network_files)."""
    described = [describe_network(SPEC, {}, f"net {i}") for i in range(networks)]
    return open_request(owner=owner, device=device, reason="test", runtime=runtime, threads=1,
                        example_shape=[1, 1, 8, 8], signatures=signatures, networks=described,
                        network_files=network_files(described, [1, 1, 8, 8], runtime))


def communicator(token: str | None) -> WebsocketCommunicator:
    headers = [ORIGIN, HOST] + ([(b"authorization", f"Token {token}".encode())] if token else [])
    return WebsocketCommunicator(application, "/ws/agent/", headers=headers)


async def hello(socket, facts=None) -> dict:
    await socket.send_json_to({"type": "hello", "protocol": 1, "agent": "test", "runtime": "onnxruntime",
                               "runtime_version": VERSION, "facts": facts or {"os": "TestOS"}})
    welcome = await socket.receive_json_from(timeout=TIMEOUT)
    assert welcome["type"] == "welcome", welcome
    return welcome


async def connected(token) -> WebsocketCommunicator:
    socket = communicator(token)
    ok, _ = await socket.connect(timeout=TIMEOUT)
    assert ok
    return socket


def refresh(instance):
    instance.refresh_from_db()
    return instance


in_db = sync_to_async


# --------------------------------------------------------------------------- the websocket


@pytest.mark.parametrize("header", ["Token not-a-token", "Bearer x", "Token "])
def test_it_refuses_an_unknown_token(agent_device, header):
    """Without the header the socket is accepted, and the token must come in hello
    (tests/test_phone_protocol.py)."""
    async def scenario():
        headers = [ORIGIN, HOST] + ([(b"authorization", header.encode())] if header else [])
        socket = WebsocketCommunicator(application, "/ws/agent/", headers=headers)
        ok, _ = await socket.connect(timeout=TIMEOUT)
        assert ok is False
        await socket.disconnect()

    async_to_sync(scenario)()
    assert refresh(agent_device).status == "offline"


def test_it_refuses_a_revoked_token(agent_device, token):
    revoke(agent_device)

    async def scenario():
        socket = communicator(token)
        assert (await socket.connect(timeout=TIMEOUT))[0] is False
        await socket.disconnect()

    async_to_sync(scenario)()


def test_hello_puts_the_device_online_with_its_facts(agent_device, token):
    async def scenario():
        socket = await connected(token)
        assert (await in_db(refresh)(agent_device)).status == "offline"  # not before hello
        welcome = await hello(socket, {"os": "Linux 6.1", "cpu_model": "Cortex-A76", "cores": 4})
        assert welcome == {"type": "welcome", "device": agent_device.pk, "name": "Pi 5",
                           "runtime": "onnxruntime", "threads": 1, "heartbeat_seconds": p.HEARTBEAT_SECONDS}
        device = await in_db(refresh)(agent_device)
        assert device.status == "online" and device.last_seen is not None
        assert device.facts == {"os": "Linux 6.1", "cpu_model": "Cortex-A76", "cores": 4, "onnxruntime": VERSION}
        first_seen = device.last_seen
        await socket.send_json_to({"type": "heartbeat"})
        assert await socket.receive_nothing(timeout=0.2)
        assert (await in_db(refresh)(agent_device)).last_seen > first_seen
        await socket.disconnect()

    async_to_sync(scenario)()
    assert refresh(agent_device).status == "offline"


def test_the_sweep_marks_a_silent_device_offline_and_a_heartbeat_brings_it_back(owner, agent_device, token):
    """A web process that dies without ending its connections cannot mark their devices offline:
    the periodic sweep does, once a device has been silent for ``silent_seconds()``."""
    from adaptation.tasks import sweep_stale_jobs

    other = add_device(owner, name="heard from", status="online", last_seen=timezone.now())

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        assert await in_db(mark_silent_devices_offline)() == []  # just heard from
        later = timezone.now() + timedelta(seconds=silent_seconds() + 1)
        assert await in_db(mark_silent_devices_offline)(later) == sorted([agent_device.pk, other.pk])
        assert (await in_db(refresh)(agent_device)).status == "offline"
        await socket.send_json_to({"type": "heartbeat"})  # still there after all
        assert await socket.receive_nothing(timeout=0.2)
        assert (await in_db(refresh)(agent_device)).status == "online"
        await socket.disconnect()

    async_to_sync(scenario)()
    # The sweep task itself, on a device last heard from long ago.
    Device.objects.filter(pk=other.pk).update(status="busy",
                                              last_seen=timezone.now() - timedelta(seconds=silent_seconds() + 1))
    sweep_stale_jobs()
    assert refresh(other).status == "offline"


def test_it_hands_out_a_request_and_stores_its_results(owner, agent_device, token, signatures):
    request = make_request(owner, agent_device, signatures, networks=2)
    n = len(signatures)

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        offer = await socket.receive_json_from(timeout=TIMEOUT)
        assert offer["type"] == "request" and offer["request"] == request.pk
        assert offer["files"] == f"/api/v1/agent/requests/{request.pk}/files"
        assert (offer["signatures"], offer["pending"], offer["networks"]) == (n, n, ["net 0", "net 1"])
        assert offer["threads"] == 1 and offer["example_shape"] == [1, 1, 8, 8]
        default = MeasureProtocol()
        assert offer["protocol"] == {name: getattr(default, name) for name in p.PROTOCOL_FIELDS}
        row = await in_db(refresh)(request)
        assert (row.status, row.claimed_by) == ("running", f"agent:{agent_device.pk}")
        assert (await in_db(refresh)(agent_device)).status == "busy"

        await socket.send_json_to({"type": "layers", "request": request.pk,
                                   "results": {str(i): STATS for i in range(2)}})
        assert await socket.receive_json_from(timeout=TIMEOUT) == {
            "type": "stored", "request": request.pk, "stored": 2, "signatures_done": 2}
        await socket.send_json_to({"type": "layers", "request": request.pk,
                                   "results": {str(i): STATS for i in range(2, n)}})
        assert (await socket.receive_json_from(timeout=TIMEOUT))["signatures_done"] == n
        await socket.send_json_to({"type": "networks", "request": request.pk, "results": [STATS, STATS]})
        assert await socket.receive_json_from(timeout=TIMEOUT) == {
            "type": "done", "request": request.pk, "status": "done"}
        assert (await in_db(refresh)(agent_device)).status == "online"
        assert await socket.receive_nothing(timeout=0.2)  # no other request
        await socket.disconnect()

    async_to_sync(scenario)()
    request.refresh_from_db()
    assert request.status == "done" and request.results == [STATS, STATS]
    assert request.runtime_version == VERSION and request.signatures_done == n
    entries = LatencyEntry.objects.filter(device=agent_device)
    assert entries.count() == len({json.dumps(s, sort_keys=True) for s in signatures})
    assert set(entries.values_list("runtime", "runtime_version", "threads")) == {("onnxruntime", VERSION, 1)}


def test_it_gives_a_reconnecting_agent_its_request_back(owner, agent_device, token, signatures):
    request = make_request(owner, agent_device, signatures)

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        assert (await socket.receive_json_from(timeout=TIMEOUT))["pending"] == len(signatures)
        await socket.send_json_to({"type": "layers", "request": request.pk, "results": {"0": STATS}})
        assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "stored"
        await socket.disconnect()  # the agent crashed
        assert (await in_db(refresh)(agent_device)).status == "offline"
        socket = await connected(token)
        await hello(socket)
        offer = await socket.receive_json_from(timeout=TIMEOUT)
        assert (offer["request"], offer["pending"]) == (request.pk, len(signatures) - 1)
        await socket.disconnect()

    async_to_sync(scenario)()
    assert refresh(request).status == "running"


def test_an_agent_that_goes_while_the_server_answers_it_goes_offline(owner, agent_device, token, signatures):
    """The agent is killed after sending a batch, before the server's "stored" reaches it: the
    server's send fails (the ASGI server raises an OSError), and the connection's end must still
    mark the device offline and leave the stored batch and the claim for the agent's return."""
    request = make_request(owner, agent_device, signatures)
    server = LeavingClient(application)

    async def scenario():
        socket = WebsocketCommunicator(server, "/ws/agent/", headers=[
            ORIGIN, HOST, (b"authorization", f"Token {token}".encode())])
        assert (await socket.connect(timeout=TIMEOUT))[0]
        await hello(socket)
        assert (await socket.receive_json_from(timeout=TIMEOUT))["request"] == request.pk
        assert (await in_db(refresh)(agent_device)).status == "busy"
        server.leave()
        await socket.send_json_to({"type": "layers", "request": request.pk, "results": {"0": STATS}})
        await socket.send_input({"type": "websocket.disconnect", "code": 1006})
        await socket.wait(timeout=TIMEOUT)  # the consumer ended: by its disconnect, not an exception

    async_to_sync(scenario)()
    assert [json.loads(m["text"])["type"] for m in server.dropped] == ["stored"]
    assert refresh(agent_device).status == "offline"
    row = refresh(request)
    assert (row.status, row.signatures_done, row.claimed_by) == ("running", 1, f"agent:{agent_device.pk}")


def test_it_offers_one_request_at_a_time_oldest_first(owner, agent_device, token, signatures):
    first = make_request(owner, agent_device, signatures[:1], networks=0)
    second = make_request(owner, agent_device, signatures[1:2], networks=0)

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        assert (await socket.receive_json_from(timeout=TIMEOUT))["request"] == first.pk
        assert await socket.receive_nothing(timeout=0.3)  # polls go on, the second waits
        await socket.send_json_to({"type": "layers", "request": first.pk, "results": {"0": STATS}})
        await socket.receive_json_from(timeout=TIMEOUT)
        await socket.send_json_to({"type": "networks", "request": first.pk, "results": []})
        assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "done"
        assert (await socket.receive_json_from(timeout=TIMEOUT))["request"] == second.pk
        await socket.disconnect()

    async_to_sync(scenario)()


def test_it_ignores_foreign_and_unknown_request_ids(owner, stranger, agent_device, token, signatures):
    mine = make_request(owner, agent_device, signatures)
    other_device = add_device(stranger, name="other")
    foreign = make_request(stranger, other_device, signatures)

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        assert (await socket.receive_json_from(timeout=TIMEOUT))["request"] == mine.pk
        for request_id in (foreign.pk, 999_999, "x", None):
            for message in ({"type": "layers", "request": request_id, "results": {"0": STATS}},
                            {"type": "networks", "request": request_id, "results": [STATS]},
                            {"type": "error", "request": request_id, "message": "boom"}):
                await socket.send_json_to(message)
                answer = await socket.receive_json_from(timeout=TIMEOUT)
                assert answer["type"] == "error", answer
        await socket.disconnect()

    async_to_sync(scenario)()
    assert not LatencyEntry.objects.exists()
    assert (refresh(foreign).status, refresh(mine).status) == ("queued", "running")


@pytest.mark.parametrize("frame, reason", [
    ("not json", "malformed JSON: not valid JSON"), ("[1, 2]", 'a JSON object with a string "type"'),
    ('{"no": "type"}', 'a JSON object with a string "type"'), ('{"type": 3}', 'a JSON object with a string "type"'),
    (b"\x00binary", "messages are JSON text frames")])
def test_it_closes_the_connection_on_a_frame_that_is_not_a_message(agent_device, token, frame, reason):
    async def scenario():
        socket = await connected(token)
        await hello(socket)
        if isinstance(frame, bytes):
            await socket.send_to(bytes_data=frame)
        else:
            await socket.send_to(text_data=frame)
        closed = await socket.receive_output(timeout=TIMEOUT)
        assert closed["type"] == "websocket.close" and closed["code"] == p.CLOSE_MALFORMED
        assert reason in closed["reason"]
        again = await connected(token)  # the server still serves the device
        await hello(again)
        await again.disconnect()

    async_to_sync(scenario)()


def test_it_answers_a_message_of_an_unknown_type_and_stays_connected(agent_device, token):
    async def scenario():
        socket = await connected(token)
        await hello(socket)
        await socket.send_to(text_data='{"type": "bogus"}')
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error" and "unknown message type 'bogus'" in answer["message"]
        await socket.send_json_to({"type": "heartbeat"})  # still served
        assert await socket.receive_nothing(timeout=0.2)
        await socket.disconnect()

    async_to_sync(scenario)()


@pytest.mark.parametrize("message", [
    {"type": "heartbeat"},
    {"type": "hello", "protocol": 99, "runtime": "onnxruntime", "runtime_version": "1"},
    {"type": "hello", "protocol": 1, "runtime": "tflite", "runtime_version": "1"},
    {"type": "hello", "protocol": 1, "runtime": "onnxruntime", "runtime_version": ""},
    {"type": "hello", "protocol": 1, "runtime": "onnxruntime", "runtime_version": "1", "facts": [1]},
    {"type": "hello", "protocol": 1, "runtime": "onnxruntime", "runtime_version": "1",
     "facts": {"x": "y" * 10_000}},
], ids=["before-hello", "protocol", "runtime", "version", "facts", "huge-facts"])
def test_it_refuses_a_bad_hello(agent_device, token, message):
    async def scenario():
        socket = await connected(token)
        await socket.send_json_to(message)
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error"
        await socket.disconnect()

    async_to_sync(scenario)()
    assert refresh(agent_device).status == "offline"


@pytest.mark.parametrize("results", [
    {"999": STATS}, {"-1": STATS}, {"zero": STATS}, {}, [STATS],
    {"0": {**STATS, "median_ms": -1.0}}, {"0": {**STATS, "n": 0}}, {"0": {"n": 3}},
    {"0": {**STATS, "extra": 1}}, {"0": {**STATS, "min_ms": 1.0}}, {"0": {**STATS, "p90_ms": "fast"}},
], ids=["index-too-big", "negative-index", "not-an-index", "empty", "list", "negative-time", "no-runs",
        "missing-fields", "unknown-field", "min-above-median", "not-a-number"])
def test_invalid_layer_results_fail_the_request(owner, agent_device, token, signatures, results):
    request = make_request(owner, agent_device, signatures)

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        await socket.receive_json_from(timeout=TIMEOUT)
        await socket.send_json_to({"type": "layers", "request": request.pk, "results": results})
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error" and answer["request"] == request.pk
        assert "invalid layer results" in answer["message"]
        await socket.disconnect()

    async_to_sync(scenario)()
    request.refresh_from_db()
    assert request.status == "failed" and "invalid layer results" in request.error
    assert not LatencyEntry.objects.exists()


def test_network_results_must_complete_the_request(owner, agent_device, token, signatures):
    request = make_request(owner, agent_device, signatures, networks=1)

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        await socket.receive_json_from(timeout=TIMEOUT)
        # The layers were never sent: the request cannot be complete.
        await socket.send_json_to({"type": "networks", "request": request.pk, "results": [STATS]})
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error" and answer["request"] == request.pk
        await socket.disconnect()

    async_to_sync(scenario)()
    request.refresh_from_db()
    assert request.status == "failed" and "not measured" in request.error


#: Per-run times of one network (200 of them, as STATS's n says), in the order they were taken.
SAMPLES = [round(0.01 + 0.005 * ((i * 37) % 100) / 100, 6) for i in range(200)]


async def send_all_layers(socket, request_id: int, count: int) -> None:
    await socket.send_json_to({"type": "layers", "request": request_id,
                               "results": {str(i): STATS for i in range(count)}})
    assert (await socket.receive_json_from(timeout=TIMEOUT))["signatures_done"] == count


@pytest.mark.parametrize("sent", ["with-samples", "old-agent"])
def test_a_users_own_measurement_asks_for_samples_and_stores_them(owner, agent_device, token, signatures, sent):
    request = make_request(owner, agent_device, signatures, networks=2)  # no job: a user's own
    many = {**STATS, "n": 5000}  # more runs than samples kept: the agent thinned them to the cap
    results = ([{**STATS, "samples_ms": SAMPLES}, {**many, "samples_ms": [0.02] * p.MAX_SAMPLES}]
               if sent == "with-samples" else [STATS, many])

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        offer = await socket.receive_json_from(timeout=TIMEOUT)
        assert offer["request"] == request.pk and offer["samples"] is True
        await send_all_layers(socket, request.pk, len(signatures))
        await socket.send_json_to({"type": "networks", "request": request.pk, "results": results})
        assert await socket.receive_json_from(timeout=TIMEOUT) == {
            "type": "done", "request": request.pk, "status": "done"}
        await socket.disconnect()

    async_to_sync(scenario)()
    request.refresh_from_db()
    # Stored as the local device's worker stores its own (devices.tasks.run_request): in the results.
    assert request.status == "done" and request.results == results


def test_a_jobs_request_asks_for_no_samples(owner, agent_device, token, signatures, make_job, sent_run_job):
    job = make_job(owner, status="running")
    networks = [describe_network(SPEC, {}, "net")]
    request = open_request(owner=owner, device=agent_device, job_id=job.pk, reason="job", runtime="onnxruntime",
                           threads=1, example_shape=[1, 1, 8, 8], signatures=signatures, networks=networks,
                           network_files=network_files(networks, [1, 1, 8, 8], "onnxruntime"))

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        offer = await socket.receive_json_from(timeout=TIMEOUT)
        assert offer["request"] == request.pk and offer["samples"] is False
        await send_all_layers(socket, request.pk, len(signatures))
        await socket.send_json_to({"type": "networks", "request": request.pk,
                                   "results": [{**STATS, "samples_ms": SAMPLES}]})
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error" and "were not asked for" in answer["message"]
        await socket.disconnect()

    async_to_sync(scenario)()
    request.refresh_from_db()
    assert request.status == "failed" and "results[0].samples_ms" in request.error
    assert request.results == []


@pytest.mark.parametrize("samples, why", [
    ("fast", "must be a list of 1 to 200 run times (at most 1000, and no more than the 200 timed runs), "
             "got str"),
    ({"0": 0.01}, "got dict"),
    ([], "must be a list of 1 to 200 run times (at most 1000, and no more than the 200 timed runs), "
         "got a list of 0"),
    (SAMPLES + [0.01], "no more than the 200 timed runs), got a list of 201"),
    ([0.01] * (p.MAX_SAMPLES + 1), "must be a list of 1 to 1000 run times"),
    ([0.01, 0.0], "samples_ms[1] must be a finite number > 0, got 0.0"),
    ([-0.01], "samples_ms[0] must be a finite number > 0, got -0.01"),
    ([0.01, "0.02"], "samples_ms[1] must be a finite number > 0, got '0.02'"),
    ([True], "samples_ms[0] must be a finite number > 0, got True"),
    ([[0.01]], "samples_ms[0] must be a finite number > 0, got [0.01]"),
], ids=["string", "object", "empty", "more-than-n", "more-than-cap", "zero", "negative",
        "text", "boolean", "nested"])  # NaN and Infinity are not JSON: tests/test_security_http.py
def test_invalid_samples_fail_the_request(owner, agent_device, token, signatures, samples, why):
    request = make_request(owner, agent_device, signatures, networks=1)
    stats = {**STATS, "n": 5000} if len(samples) > p.MAX_SAMPLES else STATS

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        await socket.receive_json_from(timeout=TIMEOUT)
        await send_all_layers(socket, request.pk, len(signatures))
        await socket.send_json_to({"type": "networks", "request": request.pk,
                                   "results": [{**stats, "samples_ms": samples}]})
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error" and answer["request"] == request.pk
        assert "invalid network results" in answer["message"] and why in answer["message"]
        assert (await in_db(refresh)(agent_device)).status == "online"
        await socket.disconnect()

    async_to_sync(scenario)()
    request.refresh_from_db()
    assert request.status == "failed" and request.results == []
    assert request.error.startswith("the agent sent invalid network results: results[0].samples_ms")


def test_the_heartbeat_interval_is_the_servers_setting(settings, agent_device, token):
    settings.AGENT_HEARTBEAT_SECONDS = 7

    async def scenario():
        socket = await connected(token)
        assert (await hello(socket))["heartbeat_seconds"] == 7
        await socket.disconnect()

    async_to_sync(scenario)()


def test_an_agent_error_fails_the_request(owner, agent_device, token, signatures):
    request = make_request(owner, agent_device, signatures)

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        await socket.receive_json_from(timeout=TIMEOUT)
        await socket.send_json_to({"type": "error", "request": request.pk, "message": "out of memory"})
        assert await socket.receive_json_from(timeout=TIMEOUT) == {
            "type": "done", "request": request.pk, "status": "failed"}
        assert (await in_db(refresh)(agent_device)).status == "online"
        await socket.disconnect()

    async_to_sync(scenario)()
    request.refresh_from_db()
    assert request.status == "failed" and request.error == "measuring on Pi 5 failed: out of memory"


def test_it_fails_requests_for_another_runtime(owner, agent_device, token, signatures):
    torch_request = make_request(owner, agent_device, signatures, runtime="torch")
    onnx_request = make_request(owner, agent_device, signatures)

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        assert (await socket.receive_json_from(timeout=TIMEOUT))["request"] == onnx_request.pk
        await socket.disconnect()

    async_to_sync(scenario)()
    torch_request.refresh_from_db()
    assert torch_request.status == "failed" and "ONNX Runtime only" in torch_request.error


def test_it_stops_a_request_that_ended_elsewhere(owner, agent_device, token, signatures):
    request = make_request(owner, agent_device, signatures)

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        await socket.receive_json_from(timeout=TIMEOUT)
        await in_db(MeasurementRequest.objects.filter(pk=request.pk).update)(status="failed")  # cancelled
        await socket.send_json_to({"type": "layers", "request": request.pk, "results": {"0": STATS}})
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error" and answer["request"] == request.pk
        assert "no longer open" in answer["message"]
        await socket.disconnect()

    async_to_sync(scenario)()
    assert not LatencyEntry.objects.exists()


def test_revoking_disconnects_a_connected_agent(agent_device, token):
    async def scenario():
        socket = await connected(token)
        await hello(socket)
        await in_db(revoke)(agent_device)
        answer = await socket.receive_json_from(timeout=TIMEOUT)
        assert answer["type"] == "error" and "revoked" in answer["message"]
        closed = await socket.receive_output(timeout=TIMEOUT)
        assert closed == {"type": "websocket.close", "code": p.CLOSE_REVOKED}
        await socket.disconnect()

    async_to_sync(scenario)()
    assert refresh(agent_device).status == "offline"


def test_a_closing_connection_leaves_a_newer_one_online(agent_device, token):
    async def scenario():
        old = await connected(token)
        await hello(old)
        new = await connected(token)
        await hello(new)
        await old.disconnect()  # the half-dead connection of a restarted agent ends late
        assert (await in_db(refresh)(agent_device)).status == "online"
        await new.disconnect()
        assert (await in_db(refresh)(agent_device)).status == "offline"

    async_to_sync(scenario)()


# --------------------------------------------------------------------------- HTTP endpoints


def test_pairing_gives_a_token_once(agent_device):
    code, _ = new_pairing(agent_device)
    client = Client(enforce_csrf_checks=True)
    answer = client.post("/api/v1/agent/pair", {"code": code.lower(), "facts": {"os": "Darwin 23"}},
                         content_type="application/json")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body.keys() == {"device", "token", "name", "runtime", "threads"}
    assert (body["device"], body["name"], body["runtime"], body["threads"]) == (agent_device.pk, "Pi 5",
                                                                                "onnxruntime", 1)
    assert refresh(agent_device).facts == {"os": "Darwin 23"}
    again = client.post("/api/v1/agent/pair", {"code": code}, content_type="application/json")
    assert again.status_code == 400 and "already used" in again.json()["detail"]


@pytest.mark.parametrize("body", ["{", '"code"', '{"code": 3}', '{"code": "AAAAA-BBBBB"}',
                                  '{"code": "AAAAA-BBBBB", "facts": []}'])
def test_pairing_refuses_bad_bodies(body):
    answer = Client().post("/api/v1/agent/pair", body, content_type="application/json")
    assert answer.status_code == 400 and answer.json()["detail"]


def test_pairing_takes_posts_only():
    assert Client().get("/api/v1/agent/pair").status_code == 405


def read_zip(content: bytes) -> tuple[dict, zipfile.ZipFile]:
    archive = zipfile.ZipFile(io.BytesIO(content))
    return json.loads(archive.read("manifest.json")), archive


def test_the_files_of_a_request_hold_what_is_missing(owner, agent_device, token, signatures):
    request = make_request(owner, agent_device, signatures, networks=1)
    Device.objects.filter(pk=agent_device.pk).update(facts={"onnxruntime": VERSION})
    store_layer_results(request, {0: STATS}, VERSION)  # one layer is in the table already
    answer = Client().get(f"/api/v1/agent/requests/{request.pk}/files", HTTP_AUTHORIZATION=f"Token {token}")
    assert answer.status_code == 200 and answer["Content-Type"] == "application/zip"
    manifest, archive = read_zip(answer.content)
    assert manifest["request"] == request.pk and manifest["runtime_version"] == VERSION
    assert [entry["index"] for entry in manifest["layers"]] == list(range(1, len(signatures)))
    assert [entry["label"] for entry in manifest["networks"]] == ["net 0"]
    for entry in manifest["layers"] + manifest["networks"]:
        session = ort.InferenceSession(archive.read(entry["file"]), providers=["CPUExecutionProvider"])
        feed = np.zeros(entry["input_shape"], dtype=np.float32)
        assert session.run(None, {session.get_inputs()[0].name: feed})[0].size > 0
    assert manifest["networks"][0]["input_shape"] == [1, 1, 8, 8]


def test_the_files_of_a_request_are_its_devices_only(owner, stranger, agent_device, token, signatures):
    other_device = add_device(stranger, name="other")
    foreign = make_request(stranger, other_device, signatures)
    mine = make_request(owner, agent_device, signatures)
    client = Client()
    auth = {"HTTP_AUTHORIZATION": f"Token {token}"}
    assert client.get(f"/api/v1/agent/requests/{foreign.pk}/files", **auth).status_code == 404
    assert client.get("/api/v1/agent/requests/999999/files", **auth).status_code == 404
    assert client.get(f"/api/v1/agent/requests/{mine.pk}/files").status_code == 401
    assert client.get(f"/api/v1/agent/requests/{mine.pk}/files",
                      HTTP_AUTHORIZATION="Token wrong").status_code == 401
    MeasurementRequest.objects.filter(pk=mine.pk).update(status="done")
    assert client.get(f"/api/v1/agent/requests/{mine.pk}/files", **auth).status_code == 404
    MeasurementRequest.objects.filter(pk=mine.pk).update(status="queued")
    revoke(agent_device)
    assert client.get(f"/api/v1/agent/requests/{mine.pk}/files", **auth).status_code == 401


def test_files_that_cannot_be_read_fail_the_request(owner, agent_device, token, signatures, media):
    """The zip carries the files stored with the request; gone from the disk, the request fails."""
    request = make_request(owner, agent_device, signatures, networks=1)
    (media / request.network_files[0]).unlink()
    answer = Client().get(f"/api/v1/agent/requests/{request.pk}/files", HTTP_AUTHORIZATION=f"Token {token}")
    assert answer.status_code == 500 and "has failed" in answer.json()["detail"]
    request.refresh_from_db()
    assert request.status == "failed" and "could not build or read" in request.error
    assert "FileNotFoundError" in request.error


def test_a_request_stored_before_requests_carried_files_fails_clearly(owner, agent_device, token, signatures):
    """An open request of an earlier version (networks, no files): the agent is never offered it,
    and its zip is refused with the reason; nothing rebuilds its networks."""
    offered = make_request(owner, agent_device, signatures, networks=0)
    downloaded = make_request(owner, agent_device, signatures, networks=0)
    MeasurementRequest.objects.filter(pk__in=[offered.pk, downloaded.pk]).update(
        networks=[describe_network(SPEC, {}, "old")])
    answer = Client().get(f"/api/v1/agent/requests/{downloaded.pk}/files", HTTP_AUTHORIZATION=f"Token {token}")
    assert answer.status_code == 500

    measurable = make_request(owner, agent_device, signatures, networks=1)

    async def scenario():
        socket = await connected(token)
        await hello(socket)
        offer = await socket.receive_json_from(timeout=TIMEOUT)  # the old one skipped, failed
        assert offer["type"] == "request" and offer["request"] == measurable.pk
        await socket.disconnect()

    async_to_sync(scenario)()
    for request in (offered, downloaded):
        request.refresh_from_db()
        assert request.status == "failed"
        assert (f"measurement request {request.pk} was stored by an earlier version of the server" in request.error
                and "measure the model again" in request.error), request.error


def test_the_agent_download_is_a_runnable_zipapp(owner, tmp_path):
    client = Client()
    assert client.get("/devices/agent.pyz").status_code == 302  # to the login page
    client.force_login(owner)
    answer = client.get("/devices/agent.pyz")
    assert answer.status_code == 200
    assert 'filename="netadapt-agent.pyz"' in answer["Content-Disposition"]
    assert answer.content.startswith(b"#!/usr/bin/env python3\n")
    names = set(zipfile.ZipFile(io.BytesIO(answer.content)).namelist())
    core = {f"devices/measure/{name}.py" for name in ("__init__", "protocol", "signature", "stats")}
    assert {"__main__.py", "devices/__init__.py", "devices/agent/cli.py", *core} <= names
    assert {n for n in names if n.startswith("devices/measure/")} == core  # no torch-using module
    assert not any("consumers" in n for n in names)
    assert client.get("/devices/agent.pyz").content == answer.content  # reproducible
    pyz = tmp_path / "netadapt-agent.pyz"
    pyz.write_bytes(answer.content)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    version = subprocess.run([sys.executable, str(pyz), "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("netadapt-agent "), version.stderr
    from devices.measure.builders import signature_input_shape, signature_onnx

    signature = trace_layers(SPEC.build().eval(), SPEC.example_input())[0].signature
    (tmp_path / "layer.onnx").write_bytes(signature_onnx(signature))
    shape = json.dumps(list(signature_input_shape(signature)))
    probe = subprocess.run([sys.executable, "-c", PURITY_PROBE, "layer.onnx", shape], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, env={**env, "PYTHONPATH": str(pyz)})
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["forbidden"] == [] and report["foreign"] == []
    assert report["stats_origin"].startswith(str(pyz))  # the core it carries, not the checkout's


# --------------------------------------------------------------------------- the agent package

PURITY_PROBE = """
import importlib, json, sys
before = set(sys.modules)
for name in ("devices.agent.cli", "devices.agent.client", "devices.agent.facts", "devices.agent.protocol",
             "devices.agent.timing"):
    importlib.import_module(name)
from devices.agent.timing import TimingStats
TimingStats.from_samples([1.0, 2.0])
if len(sys.argv) > 1:  # time an ONNX file as a request would, with the agent's own code
    from devices.agent.timing import TimingProtocol, load_runner, time_with_retries
    runner = load_runner(open(sys.argv[1], "rb").read(), json.loads(sys.argv[2]), threads=1)
    (timed,) = time_with_retries([runner], TimingProtocol(warmup=1, rounds=2, runs_per_round=3))
    assert timed.n == 6 and timed.min_ms > 0
forbidden = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "django", "channels", "celery", "onnx"})
# Everything imported beyond the interpreter's start: the standard library and these only (the
# runtime modules that Cython-compiled extensions of numpy register are not imports).
foreign = sorted({m.split(".")[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)
                 - {"devices", "numpy", "onnxruntime", "websockets", "cython_runtime"})
foreign = [m for m in foreign if not m.startswith("_cython_")]
print(json.dumps({"forbidden": forbidden, "foreign": foreign,
                  "stats_origin": sys.modules["devices.measure.stats"].__spec__.origin}))
"""


def test_the_agent_package_imports_nothing_of_the_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(REPO)
    probe = subprocess.run([sys.executable, "-c", PURITY_PROBE], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["forbidden"] == [] and report["foreign"] == []
    assert report["stats_origin"] == str(REPO / "devices" / "measure" / "stats.py")


def test_the_agent_computes_the_servers_statistics():
    from devices.agent.timing import TimingStats as AgentStats
    from devices.measure.stats import TimingStats as ServerStats

    assert AgentStats is ServerStats  # one class: the agent imports the core, it runs no copy
    samples = list(np.random.default_rng(0).gamma(2.0, 0.1, size=257))
    assert AgentStats.from_samples(samples).to_dict() == ServerStats.from_samples(samples).to_dict()
    assert AgentStats.from_samples(samples).spread == ServerStats.from_samples(samples).spread
    assert p.STATS_FIELDS == tuple(f.name for f in fields(ServerStats))


def test_the_agent_protocol_defaults_are_the_servers():
    from devices.agent.timing import TimingProtocol

    server, agent = MeasureProtocol(), TimingProtocol()
    assert [f.name for f in fields(TimingProtocol)] == [f.name for f in fields(MeasureProtocol)]
    assert all(getattr(agent, f.name) == getattr(server, f.name) for f in fields(MeasureProtocol))
    assert set(p.PROTOCOL_FIELDS) == {f.name for f in fields(MeasureProtocol)} - {"threads"}
    sent = TimingProtocol.from_message(2, {"warmup": 1, "rounds": 3, "runs_per_round": 7, "max_spread": 0.3,
                                           "max_retries": 0})
    assert (sent.threads, sent.runs, sent.max_spread, sent.max_retries) == (2, 21, 0.3, 0)
    for threads, protocol in ((0, {}), (1, {"rounds": 0}), (1, {"max_spread": 0}), (1, {"bogus": 1}),
                              (1, {"runs_per_round": "many"})):
        with pytest.raises(p.ProtocolError):
            TimingProtocol.from_message(threads, protocol)


def test_the_agent_times_onnx_models_interleaved_with_retries():
    from devices.agent.timing import TimingProtocol, load_runner, time_with_retries
    from devices.measure.builders import signature_input_shape, signature_onnx
    from devices.measure.signature import LayerSignature

    signature = LayerSignature.from_dict(trace_layers(SPEC.build().eval(), SPEC.example_input())[0]
                                         .signature.to_dict())
    runner = load_runner(signature_onnx(signature), signature_input_shape(signature), threads=1)
    calls = {"a": 0, "b": 0}

    def counting(name):
        def run():
            calls[name] += 1
            runner()
        return run

    protocol = TimingProtocol(warmup=2, rounds=3, runs_per_round=4, max_spread=1e-12, max_retries=2)
    stats = time_with_retries([counting("a"), counting("b")], protocol)
    assert [s.n for s in stats] == [12, 12] and all(0 < s.min_ms <= s.median_ms for s in stats)
    # A spread that can never be met: both are timed three times in all (the first and 2 retries).
    assert calls == {"a": 3 * (2 + 12), "b": 3 * (2 + 12)}


def test_the_agent_keeps_the_samples_of_the_attempt_it_keeps(monkeypatch):
    from devices.agent import timing
    from devices.measure import stats
    from devices.measure.stats import TimingStats

    # Scripted attempts of runners a, b: a is noisy at first, narrower on its first retry and wider
    # again on its second; b is steady from the start (and so never timed again).
    noisy, narrow, wider = [1.0, 1.0, 3.0, 5.0], [1.0, 1.1, 1.2, 1.3], [1.0, 2.0, 3.0, 4.0]
    steady = [2.0, 2.0, 2.0, 2.1]
    attempts = iter([[noisy, steady], [narrow], [wider]])
    groups = []

    def scripted(runners, warmup, rounds, runs_per_round):
        groups.append(list(runners))
        return next(attempts)

    monkeypatch.setattr(stats, "interleaved_samples", scripted)  # the loop and its retries: the core's
    a, b = (lambda: None), (lambda: None)
    protocol = timing.TimingProtocol(max_spread=0.05, max_retries=2)
    timed = timing.time_with_retries_and_samples([a, b], protocol)
    assert groups == [[a, b], [a], [a]]
    assert [t.samples_ms for t in timed] == [narrow, steady]
    assert [t.stats for t in timed] == [TimingStats.from_samples(narrow), TimingStats.from_samples(steady)]


def test_samples_are_thinned_evenly_to_the_cap_and_rounded_to_the_nanosecond():
    runs = [0.1 + i * 1.37e-7 for i in range(2500)]
    kept = p.kept_samples(runs)
    assert len(kept) == p.MAX_SAMPLES == 1000
    assert kept[0] == round(runs[0], 6) and kept[-1] == round(runs[2497], 6)  # every 2.5th, to the end
    assert p.kept_samples(runs[:200]) == [round(r, 6) for r in runs[:200]]
    assert p.kept_samples([0.12345678]) == [0.123457]


def test_the_agent_settings_come_from_the_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETADAPT_AGENT_")}
    env.update(PYTHONPATH=str(REPO), NETADAPT_DATA_DIR=str(tmp_path))
    code = "import json, webapp.settings as s; print(json.dumps([s.AGENT_POLL_SECONDS, s.AGENT_HEARTBEAT_SECONDS]))"

    def read(**variables):
        run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, **variables},
                             capture_output=True, text=True, timeout=60)
        return json.loads(run.stdout) if run.returncode == 0 else run.stderr

    assert read() == [0, p.HEARTBEAT_SECONDS]  # 0: the consumer falls back to EVENT_POLL_SECONDS
    assert read(NETADAPT_AGENT_POLL_SECONDS="3", NETADAPT_AGENT_HEARTBEAT_SECONDS="30") == [3, 30]
    assert "NETADAPT_AGENT_HEARTBEAT_SECONDS=0 must be at least 1" in read(NETADAPT_AGENT_HEARTBEAT_SECONDS="0")
    assert "NETADAPT_AGENT_POLL_SECONDS='often' is not an integer" in read(NETADAPT_AGENT_POLL_SECONDS="often")


class FakeChannel:
    """What ``Agent.serve_request`` sends, and the server's answers it waits for."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def send(self, message_type, **fields):
        self.sent.append((message_type, fields))

    def expect(self, types, request_id=None, timeout=None):
        answer = {"stored": {"type": "stored", "signatures_done": 0}, "done": {"type": "done"}}[types[0]]
        return {**answer, "request": request_id}


def serve_zip(monkeypatch, files: dict[str, bytes], manifest: dict, **request) -> FakeChannel:
    from devices.agent import client

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in {**files, "manifest.json": json.dumps(manifest).encode()}.items():
            archive.writestr(name, data)
    monkeypatch.setattr(client, "download", lambda server, path, token, out: out.write(buffer.getvalue()))
    channel = FakeChannel()
    agent = client.Agent("http://server.example", "token", facts={}, batch=2)
    agent.serve_request(channel, {"type": "request", "request": 7, "files": "/files", "threads": 1,
                                  "protocol": {"warmup": 1, "rounds": 2, "runs_per_round": 3}, **request})
    return channel


@pytest.mark.parametrize("samples", [None, False, True], ids=["older-server", "a-job", "a-users-own"])
def test_the_agent_times_a_request_in_batches_then_its_networks(monkeypatch, signatures, samples):
    from devices.measure.builders import model_to_onnx, signature_input_shape, signature_onnx
    from devices.measure.signature import LayerSignature

    layers = [LayerSignature.from_dict(s) for s in signatures[:3]]
    files = {f"layers/{i}.onnx": signature_onnx(s) for i, s in enumerate(layers)}
    files["networks/0.onnx"] = model_to_onnx(SPEC.build(), SPEC.example_input())
    manifest = {"request": 7, "layers": [{"index": i, "file": f"layers/{i}.onnx",
                                          "input_shape": list(signature_input_shape(s))} for i, s in enumerate(layers)],
                "networks": [{"index": 0, "file": "networks/0.onnx", "label": "net",
                              "input_shape": list(SPEC.example_input().shape)}]}
    channel = serve_zip(monkeypatch, files, manifest, **({} if samples is None else {"samples": samples}))
    assert [(t, f["request"]) for t, f in channel.sent] == [("layers", 7), ("layers", 7), ("networks", 7)]
    assert [sorted(f["results"]) for _, f in channel.sent[:2]] == [["0", "1"], ["2"]]
    layers = [*channel.sent[0][1]["results"].values(), *channel.sent[1][1]["results"].values()]
    assert [p.check_stats(stats)["n"] for stats in layers] == [6] * 3  # layers never carry samples
    (network,) = channel.sent[2][1]["results"]
    if not samples:
        assert p.check_stats(network)["n"] == 6  # statistics only, as before
        return
    # The per-run times of the attempt the statistics summarise, as the server checks them.
    checked = p.check_network_result(network, samples=True)
    assert checked["n"] == 6 and len(checked["samples_ms"]) == 6
    from devices.measure.stats import TimingStats

    summary = TimingStats.from_samples(checked["samples_ms"])
    for name in p.STATS_FIELDS[1:]:
        assert getattr(summary, name) == pytest.approx(checked[name], abs=1e-6)


@pytest.mark.parametrize("problem", ["corrupt-file", "missing-file", "wrong-request", "bad-shape"])
def test_the_agent_fails_a_request_it_cannot_time(monkeypatch, signatures, problem):
    from devices.measure.builders import signature_input_shape, signature_onnx
    from devices.measure.signature import LayerSignature

    layer = LayerSignature.from_dict(signatures[0])
    files = {"layers/0.onnx": b"not onnx" if problem == "corrupt-file" else signature_onnx(layer)}
    entry = {"index": 0, "file": "layers/9.onnx" if problem == "missing-file" else "layers/0.onnx",
             "input_shape": [1, 2, 3] if problem == "bad-shape" else list(signature_input_shape(layer))}
    channel = serve_zip(monkeypatch, files, {"request": 8 if problem == "wrong-request" else 7,
                                             "layers": [entry], "networks": []})
    ((message_type, fields),) = channel.sent
    assert message_type == "error" and fields["request"] == 7 and fields["message"]


def test_the_state_file_is_private_and_replaced_atomically(tmp_path):
    from devices.agent.cli import read_state, write_state

    path = tmp_path / "sub" / "state.json"
    assert read_state(path) == {}
    write_state(path, {"server": "http://x", "token": "secret"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_state(path, {"server": "http://y", "token": "other"})
    assert read_state(path) == {"server": "http://y", "token": "other"}
    assert [f.name for f in path.parent.iterdir()] == ["state.json"]


def test_the_agent_backs_off_exponentially_up_to_a_cap():
    from devices.agent.client import Agent, websocket_url
    from tests.e2e_support import free_port

    waits = []

    def sleep(seconds):
        waits.append(seconds)
        if len(waits) == 7:
            raise KeyboardInterrupt

    agent = Agent(f"http://127.0.0.1:{free_port()}/", "token", facts={}, initial_backoff=1.0, max_backoff=8.0,
                  sleep=sleep)
    assert websocket_url(agent.server).endswith(f"{agent.server.split('//')[1]}/ws/agent/")
    with pytest.raises(KeyboardInterrupt):
        agent.run_forever()  # nothing listens on that port
    bases = [1, 2, 4, 8, 8, 8, 8]
    assert all(0.8 * base <= wait <= 1.2 * base for wait, base in zip(waits, bases)), waits


@pytest.mark.parametrize("header, token", [("Token abc", "abc"), ("token  abc ", "abc"), ("Bearer abc", None),
                                           ("Token", None), ("Token a b", None), (None, None), (b"Token z", "z")])
def test_it_reads_the_token_header(header, token):
    assert p.token_of(header) == token
