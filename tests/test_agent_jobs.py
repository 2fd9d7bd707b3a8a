"""A user pairs a second device from the browser pages, runs a job on it, and the next job on the
device reuses the look-up table the first one built: real uvicorn, a real Celery worker, and the
agent program downloaded from the "Add device" page, run as a user would run it.
"""
from __future__ import annotations

import os
import re
import sys

import pytest

from tests.e2e_support import JOB_DEADLINE_S, PRODUCTION, HttpClient, Process, wait_until
from tests.test_e2e import PASSWORD, create_user

pytestmark = [pytest.mark.slow, pytest.mark.services]
if PRODUCTION:  # committed rows in pytest-django's PostgreSQL test database, read by the servers
    pytestmark.append(pytest.mark.django_db(transaction=True))

# Two iterations with a small first step: quick, and every step needs new table entries.
JOB = {"metric": "latency", "budget_mode": "percent", "budget": 90, "initial_reduction": 0.05,
       "decay": 0.9, "short_term_steps": 3, "long_term_epochs": 0, "holdout_size": 0.15,
       "max_iterations": 2}


def test_a_job_on_a_paired_agent_and_the_next_one_reuses_its_table(live_app, digits_cnn_state_dict, tmp_path):
    from adaptation.models import Job
    from devices.models import Device, LatencyEntry, MeasurementRequest

    app = live_app
    create_user("frank")
    browser = HttpClient(app.base_url)
    browser.log_in("frank", PASSWORD)

    # "Add device": the page shows a one-time code and the command to run on the device.
    page = browser.get("/devices/add/")
    assert page.status == 200
    answer = browser.post_form("/devices/add/", {"name": "bench phone", "runtime": "onnxruntime", "threads": "1",
                                                 "description": "", "csrfmiddlewaretoken": browser.cookie("csrftoken")})
    assert answer.status == 200, answer.body[:500]
    html = answer.body.decode()
    command = re.search(r"python netadapt-agent\.pyz --server (\S+) --pair ([A-Z0-9]{5}-[A-Z0-9]{5})", html)
    assert command, "the page shows no pairing command"
    assert command.group(1).rstrip("/") == app.base_url
    device = Device.objects.get(name="bench phone")
    assert device.kind == "agent" and device.status == "offline"

    # The agent program from the page, run with the page's command.
    program = browser.get("/devices/agent.pyz")
    assert program.status == 200
    (tmp_path / "netadapt-agent.pyz").write_bytes(program.body)
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    agent = Process("agent", [sys.executable, str(tmp_path / "netadapt-agent.pyz"), "--server", command.group(1),
                              "--pair", command.group(2), "--state", str(tmp_path / "agent-state.json")],
                    {**env, "PYTHONUNBUFFERED": "1"}, app.logs)
    app.processes.append(agent)
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", "the agent to come online", app, 180)

    # Two identical jobs on the paired device, through the API.
    spec, weights = digits_cnn_state_dict
    api = HttpClient(app.base_url)
    api.token = api.post_json("/api/v1/token", {"username": "frank", "password": PASSWORD}).json()["token"]
    model = api.upload_checked("models", {
        "name": "digits cnn", "arch": spec.arch, "width": spec.width, "num_classes": spec.num_classes,
        "in_channels": spec.in_channels, "resolution": spec.resolution}, {"file": ("digits.pt", weights)}, app)
    assert model["status"] == "ready", model
    dataset = next(d for d in api.get("/api/v1/datasets").json() if d["builtin_name"] == "digits")
    app.start_worker()

    def run_job() -> Job:
        answer = api.post_json("/api/v1/jobs", {"model": model["id"], "dataset": dataset["id"],
                                                "device": device.pk, **JOB})
        assert answer.status == 201, answer.body
        job_id = answer.json()["id"]
        wait_until(lambda: Job.objects.get(pk=job_id).status in ("finished", "failed", "cancelled"),
                   f"job {job_id} to end", app, JOB_DEADLINE_S)
        job = Job.objects.get(pk=job_id)
        assert job.status == "finished", f"{job.error}\n{app.logs_text()}"
        return job

    first = run_job()
    entries = dict(LatencyEntry.objects.filter(device=device).values_list("signature_key", "measured_at"))
    version = Device.objects.get(pk=device.pk).facts["onnxruntime"]
    assert entries and set(LatencyEntry.objects.filter(device=device).values_list("runtime_version", flat=True)) == {version}
    first_requests = MeasurementRequest.objects.filter(job_id=first.pk)
    assert sum(len(r.signatures) for r in first_requests) == len(entries)  # every entry measured by the agent
    assert all(r.status == "done" and r.claimed_by == f"agent:{device.pk}" for r in first_requests)

    second = run_job()
    asked = [s for r in MeasurementRequest.objects.filter(job_id=second.pk) for s in r.signatures]
    after = dict(LatencyEntry.objects.filter(device=device).values_list("signature_key", "measured_at"))
    # Nothing the first job measured was measured again: same rows, same times.
    assert {key: after[key] for key in entries} == entries
    assert len(asked) == len(after) - len(entries)
    agent.stop(grace=10)
