"""The real agent program against a real server: pair, measure, reconnect after a server restart,
survive a SIGKILL, be revoked.

uvicorn serves the application over a database shared with this test (tests/e2e_support.py: a
file SQLite database in embedded mode, PostgreSQL + Redis in production mode); the agent runs as
``python -m devices.agent`` in its own process, exactly as on a device, over loopback. The test
opens measurement requests the way a job does (``open_request``) and waits on the database.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from tests.e2e_support import PRODUCTION, HttpClient, LiveApp, Process, wait_until
from tests.test_e2e import PASSWORD, create_user

pytestmark = [pytest.mark.slow, pytest.mark.services]
if PRODUCTION:  # committed rows in pytest-django's PostgreSQL test database, read by the servers
    pytestmark.append(pytest.mark.django_db(transaction=True))

DEADLINE_S = 300  # a request timed on a loaded two-core machine, and the agent's start
ONLINE_DEADLINE_S = 120


class Agents:
    """Agent processes of one test, logging beside the servers' logs."""

    def __init__(self, app: LiveApp, state: Path) -> None:
        self.app, self.state, self.started = app, state, []
        self.env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
        self.env["PYTHONUNBUFFERED"] = "1"

    def start(self, *args: str) -> Process:
        name = f"agent-{len(self.started) + 1}"
        argv = [sys.executable, "-m", "devices.agent", "--server", self.app.base_url, "--state", str(self.state),
                "--batch", "8", "--max-backoff", "2", *args]
        process = Process(name, argv, self.env, self.app.logs)
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} log (end) -----\n{p.tail()}" for p in self.started)

    def stop(self) -> None:
        for process in self.started:
            process.stop(grace=10)


def wait_for(condition, what: str, app: LiveApp, agents: Agents, deadline_s: float = DEADLINE_S):
    try:
        return wait_until(condition, what, app, deadline_s)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{agents.logs()}") from None


def restart_web(app: LiveApp) -> None:
    """Stop uvicorn (its websockets close) and start it again on the same port."""
    app.web.stop()
    app.processes.remove(app.web)
    app.start_web()


def conv(c_in: int, c_out: int, hw: int) -> dict:
    from devices.measure.signature import LayerSignature

    return LayerSignature(op="conv", in_channels=c_in, out_channels=c_out, kernel=(3, 3), stride=(1, 1),
                          padding=(1, 1), dilation=(1, 1), groups=1, input_hw=(hw, hw), batch=1, bias=False,
                          fused="bn+relu").to_dict()


def test_a_paired_agent_measures_reconnects_survives_a_kill_and_is_revoked(live_app, tmp_path):
    from django.utils import timezone

    from adaptation.netadapt.architectures import describe_network
    from adaptation.netadapt.spec import ArchitectureSpec
    from adaptation.network_files import network_files
    from devices.measure.tracing import trace_layers
    from devices.models import Device, LatencyEntry, MeasurementRequest
    from devices.pairing import new_pairing, revoke
    from devices.requests import open_request

    app = live_app
    version = ort.__version__
    create_user("agent-owner")
    api = HttpClient(app.base_url)
    answer = api.post_json("/api/v1/token", {"username": "agent-owner", "password": PASSWORD})
    assert answer.status == 200, answer.body
    api.token = answer.json()["token"]
    answer = api.post_json("/api/v1/devices", {"name": "test board", "threads": 1})
    assert answer.status == 201, answer.body
    device = Device.objects.get(pk=answer.json()["id"])
    owner = device.owner
    code, _ = new_pairing(device)  # what the device's "Pair" button does
    agents = Agents(app, tmp_path / "agent-state.json")

    def device_row() -> Device:
        return Device.objects.get(pk=device.pk)

    def request_row(request) -> MeasurementRequest:
        return MeasurementRequest.objects.get(pk=request.pk)

    try:
        # Pairing: the token is kept in a private state file; the device comes online with facts.
        first = agents.start("--pair", code)
        wait_for(lambda: device_row().status == "online", "the agent to come online", app, agents,
                 ONLINE_DEADLINE_S)
        facts = device_row().facts
        assert facts["onnxruntime"] == version and facts["cores"] >= 1 and facts["numpy"]
        assert facts["os"] and facts["machine"] and facts["python"] and device_row().last_seen
        assert stat.S_IMODE(agents.state.stat().st_mode) == 0o600
        state = json.loads(agents.state.read_text())
        assert state["server"] == app.base_url and state["device"] == device.pk and state["token"]

        # A request as a job opens it: a small CNN's layers and the network itself.
        spec = ArchitectureSpec("plain_cnn", 10, 1, 0.5, 16)
        torch.manual_seed(0)
        layers = [layer.signature.to_dict() for layer in trace_layers(spec.build().eval(), spec.example_input())]
        networks = [describe_network(spec, {}, "original")]
        request = open_request(owner=owner, device=device, reason="a small CNN", runtime="onnxruntime", threads=1,
                               example_shape=[1, 1, 16, 16], signatures=layers, networks=networks,
                               network_files=network_files(networks, [1, 1, 16, 16], "onnxruntime"))
        wait_for(lambda: request_row(request).status in ("done", "failed"), "the request to end", app, agents)
        request = request_row(request)
        assert request.status == "done", request.error
        assert request.runtime_version == version and request.signatures_done == len(layers)
        (network,) = request.results
        assert network["n"] >= 200 and 0 < network["min_ms"] <= network["median_ms"] < 1000
        entries = LatencyEntry.objects.filter(device=device)
        assert entries.count() == len({json.dumps(s, sort_keys=True) for s in layers})
        for entry in entries:
            assert (entry.runtime, entry.runtime_version, entry.threads) == ("onnxruntime", version, 1)
            assert entry.n >= 200 and 0 < entry.min_ms <= entry.p10_ms <= entry.median_ms <= entry.p90_ms < 1000
            assert entry.mean_ms >= entry.min_ms and entry.std_ms >= 0
        assert device_row().status == "online"

        # The server restarts: the agent reconnects by itself (its backoff capped at 2 s here).
        restart_web(app)
        restarted_at = timezone.now()
        wait_for(lambda: device_row().status == "online" and device_row().last_seen > restarted_at,
                 "the agent to reconnect to the restarted server", app, agents, ONLINE_DEADLINE_S)
        assert first.alive()

        # A long request: the agent is killed once some batches are stored...
        many = [conv(c_in, c_out, 16) for c_in in range(8, 56, 8) for c_out in range(8, 136, 8)]
        long_request = open_request(owner=owner, device=device, reason="many layers", runtime="onnxruntime",
                                    threads=1, example_shape=[1, 1, 16, 16], signatures=many, networks=networks,
                                    network_files=network_files(networks, [1, 1, 16, 16], "onnxruntime"))
        wait_for(lambda: request_row(long_request).signatures_done > 0, "the first batch", app, agents)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=30)
        wait_for(lambda: device_row().status == "offline", "the server to see the agent go", app, agents, 60)
        stored = {e.signature_key: (e.pk, e.measured_at)
                  for e in LatencyEntry.objects.filter(device=device, signature_key__in=[
                      _key(s) for s in many])}
        interrupted = request_row(long_request)
        assert interrupted.status == "running" and interrupted.claimed_by == f"agent:{device.pk}"
        assert 0 < len(stored) == interrupted.signatures_done < len(many), \
            f"{len(stored)} of {len(many)} stored: kill the agent earlier"

        # ...and the restarted agent (no arguments but its state) finishes it, measuring only the rest.
        second = agents.start()
        wait_for(lambda: request_row(long_request).status in ("done", "failed"), "the long request to end", app,
                 agents)
        finished = request_row(long_request)
        assert finished.status == "done", finished.error
        assert finished.attempts == 2 and len(finished.results) == 1
        after = {e.signature_key: (e.pk, e.measured_at)
                 for e in LatencyEntry.objects.filter(device=device, signature_key__in=[_key(s) for s in many])}
        assert len(after) == len(many)
        assert {key: after[key] for key in stored} == stored, "entries stored before the kill were measured again"
        assert f"{len(many) - len(stored)} of {len(many)} layer(s) to time" in second.tail(20_000)

        # Revoked while connected: the agent is disconnected and stops; a restarted one is refused.
        revoke(device_row())
        wait_for(lambda: second.process.poll() is not None, "the revoked agent to stop", app, agents, 60)
        assert second.process.returncode == 3, agents.logs()
        third = agents.start()
        wait_for(lambda: third.process.poll() is not None, "the restarted agent to be refused", app, agents, 120)
        assert third.process.returncode == 3 and "refused this agent's token" in third.tail(), agents.logs()
        assert device_row().status == "offline"
    finally:
        agents.stop()


def _key(signature: dict) -> str:
    from devices.measure.signature import LayerSignature

    return LayerSignature.from_dict(signature).key()
