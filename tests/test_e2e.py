"""From upload to download as a client does it: real uvicorn, a real Celery worker, REST and websocket.

The servers (tests/e2e_support.py) share this test's database and broker: a file SQLite
database under tmp_path in embedded mode, pytest-django's PostgreSQL test database and the test
Redis in production mode. The worker starts only once the websocket has its snapshot of the
queued job, so every event of the run reaches the socket live.
"""
from __future__ import annotations

import json
import re
import time

import numpy as np
import onnxruntime as ort
import pytest
from websockets.sync.client import connect

from tests.e2e_support import JOB_DEADLINE_S, PRODUCTION, HttpClient, LiveApp, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.services]
if PRODUCTION:  # committed rows in pytest-django's PostgreSQL test database, read by the servers
    pytestmark.append(pytest.mark.django_db(transaction=True))

PASSWORD = "a long enough test password"
# Three iterations reach the budget on paper (6% + 5.4% + 4.9% of the original); one proposal may
# cut more than its target asks, so one iteration can be enough. The cap keeps the run short, and it
# stops before a fourth plan: on a loaded machine one slow whole-network measurement can flatten the
# engine's latency calibration so that no proposal meets the next target.
JOB = {"metric": "latency", "budget_mode": "percent", "budget": 85, "initial_reduction": 0.06,
       "decay": 0.9, "short_term_steps": 5, "long_term_epochs": 0.3, "holdout_size": 0.15,
       "max_iterations": 3}
ENDED = ("finished", "failed", "cancelled")


def create_user(username: str) -> None:
    """A user whose password the servers can check (this process hashes with MD5, they do not)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    hasher = PBKDF2PasswordHasher()
    get_user_model().objects.create(username=username, password=hasher.encode(PASSWORD, hasher.salt()))


def open_socket(app: LiveApp, client: HttpClient, job_id: int):
    return connect(f"{app.ws_url}/ws/jobs/{job_id}/", origin=app.base_url, open_timeout=60,
                   additional_headers={"Cookie": client.cookie_header()})


def receive(socket, app: LiveApp, deadline: float, what: str) -> dict:
    """The next message, failing at the deadline or as soon as a server process exits."""
    while True:
        app.check_running(f" while waiting for {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{app.logs_text()}"
        try:
            return json.loads(socket.recv(timeout=1))
        except TimeoutError:
            continue


def test_it_adapts_a_model_from_upload_to_download(live_app, digits_cnn_state_dict):
    app = live_app
    spec, weights = digits_cnn_state_dict
    create_user("erin")
    api = HttpClient(app.base_url)
    answer = api.post_json("/api/v1/token", {"username": "erin", "password": PASSWORD})
    assert answer.status == 200, answer.body
    api.token = answer.json()["token"]

    # The model: a state dict of plain_cnn, stored as "checking" and pre-flighted by the checking worker.
    model = api.upload_checked("models", {
        "name": "digits cnn", "arch": spec.arch, "width": spec.width, "num_classes": spec.num_classes,
        "in_channels": spec.in_channels, "resolution": spec.resolution}, {"file": ("digits.pt", weights)},
        live_app)
    assert model["status"] == "ready" and model["preflight"]["macs"] > 0
    device = next(d for d in api.get("/api/v1/devices").json() if d["system"])
    dataset = next(d for d in api.get("/api/v1/datasets").json() if d["builtin_name"] == "digits")

    answer = api.post_json("/api/v1/jobs", {"model": model["id"], "dataset": dataset["id"],
                                            "device": device["id"], **JOB})
    assert answer.status == 201, answer.body
    job_id = answer.json()["id"]
    assert answer.json()["status"] == "queued"

    # A browser session for the websocket (it authenticates with the session cookie).
    browser = HttpClient(app.base_url)
    browser.log_in("erin", PASSWORD)
    deadline = time.monotonic() + JOB_DEADLINE_S
    with open_socket(app, browser, job_id) as socket:
        snapshot = receive(socket, app, deadline, "the snapshot")
        assert snapshot["type"] == "snapshot"
        assert snapshot["job"]["id"] == job_id and snapshot["job"]["status"] == "queued"
        seqs = [e["seq"] for e in snapshot["events"]]
        assert seqs == list(range(1, len(seqs) + 1)) and snapshot["last_seq"] == len(seqs)

        app.start_worker()  # the job runs now: everything that follows is live
        live = []
        while not (live and live[-1]["event_type"] == "job.status" and live[-1]["payload"]["status"] in ENDED):
            message = receive(socket, app, deadline, "the job's events")
            assert message["type"] == "event" and message["job"] == job_id
            assert message["seq"] == (live[-1]["seq"] if live else snapshot["last_seq"]) + 1, \
                "sequence numbers must arrive once each, in order"
            live.append(message)
    types = [m["event_type"] for m in live]
    assert live[-1]["payload"]["status"] == "finished", live[-1]["payload"]
    assert types[-2:] == ["job.finish", "job.status"] and types.count("job.start") == 1
    numbers = [m["payload"]["number"] for m in live if m["event_type"] == "job.iteration"]
    assert len(numbers) >= 1 and numbers == list(range(len(numbers)))
    assert types.index("job.start") < types.index("job.iteration") < types.index("job.finish")

    # The job over the API agrees with the events; its last iteration downloads as ONNX.
    job = api.get(f"/api/v1/jobs/{job_id}").json()
    assert job["status"] == "finished" and job["final_iteration"] == numbers[-1]
    assert [it["number"] for it in job["iterations"]] == [-1, *numbers]
    # What the algorithm guarantees, busy machine or not: every iteration met its own target under
    # the estimate it was chosen with (estimates of different iterations are not comparable: the
    # calibration is refitted in between), it removed channels (MACs fall), the run stopped at the
    # budget (under the last estimate) or at the cap, and the final network was measured against the
    # original in the same rounds.
    report = api.get(f"/api/v1/jobs/{job_id}/report", format="json").json()
    for row in report["iterations"][1:]:
        (chosen,) = [p for p in row["proposals"] if p["chosen"]]
        assert chosen["group"] == row["chosen_group"] and chosen["resource"] <= row["target"], row
    macs = [row["macs"] for row in report["iterations"]]
    assert all(a > b for a, b in zip(macs, macs[1:])), macs
    result = job["result"]
    assert result["budget_met"] == (result["measured_ratio"] <= JOB["budget"] / 100)  # side by side
    assert (result["checked_ratio"] or 1.0) <= JOB["budget"] / 100 or result["iterations"] == JOB["max_iterations"], result
    assert result["ab_original"]["min_ms"] > 0 and result["ab_final"]["min_ms"] > 0
    assert result["measured_ratio"] == pytest.approx(result["ab_final"]["min_ms"] / result["ab_original"]["min_ms"])
    page = browser.get(f"/jobs/{job_id}/")
    html = page.body.decode()
    assert page.status == 200 and (f"{result['measured_ratio']:.1%} of the original&#x27;s latency, measured "
                                   "side by side") in html, html[:2000]
    assert ("budget met" if result["budget_met"] else "budget not met") in html
    answer = api.get(f"/api/v1/jobs/{job_id}/iterations/{numbers[-1]}/download", format="onnx")
    assert answer.status == 200, answer.body[:500]
    session = ort.InferenceSession(answer.body, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32)
    output = session.run(None, {session.get_inputs()[0].name: image})[0]
    assert output.shape == (1, 10) and np.isfinite(output).all()

    # A page opened afterwards gets the whole history in its snapshot, with the same numbers.
    with open_socket(app, browser, job_id) as socket:
        later = receive(socket, app, time.monotonic() + 60, "the second snapshot")
    assert later["type"] == "snapshot" and later["job"]["status"] == "finished"
    seen = snapshot["events"] + live
    assert [(e["seq"], e["event_type"]) for e in later["events"]] == [(e["seq"], e["event_type"]) for e in seen]
    assert len({e["seq"] for e in later["events"]}) == len(later["events"]) == later["last_seq"]


# Fine-tunes far longer than a test: a cancel must stop them from inside (training.HOOK_EVERY).
LONG_PROPOSALS = {"metric": "macs", "budget_mode": "percent", "budget": 85, "initial_reduction": 0.1,
                  "decay": 0.9, "short_term_steps": 20_000, "long_term_epochs": 0, "holdout_size": 0.15,
                  "max_iterations": 1}
LONG_FINAL = {**LONG_PROPOSALS, "short_term_steps": 5, "long_term_epochs": 200}


def job_events(job_id: int, pattern: str) -> list[re.Match]:
    """Matches of ``pattern`` in the job's log events so far (read from the shared database)."""
    from adaptation.models import JobEvent

    messages = JobEvent.objects.filter(job_id=job_id, type="job.log").values_list("payload__message", flat=True)
    return [match for message in messages if (match := re.fullmatch(pattern, message))]


def test_a_cancel_stops_long_fine_tunes_within_a_few_dozen_steps(live_app, digits_cnn_state_dict):
    from adaptation.models import Job
    from adaptation.netadapt.training import HOOK_EVERY

    app = live_app
    spec, weights = digits_cnn_state_dict
    create_user("fay")
    api = HttpClient(app.base_url)
    api.token = api.post_json("/api/v1/token", {"username": "fay", "password": PASSWORD}).json()["token"]
    model = api.upload_checked("models", {
        "name": "digits cnn", "arch": spec.arch, "width": spec.width, "num_classes": spec.num_classes,
        "in_channels": spec.in_channels, "resolution": spec.resolution}, {"file": ("digits.pt", weights)}, app)
    assert model["status"] == "ready", model
    inputs = {"model": model["id"],
              "device": next(d for d in api.get("/api/v1/devices").json() if d["system"])["id"],
              "dataset": next(d for d in api.get("/api/v1/datasets").json() if d["builtin_name"] == "digits")["id"]}

    # 1. The proposals' short-term fine-tunes (tasks of the worker while the job waits).
    answer = api.post_json("/api/v1/jobs", {**inputs, **LONG_PROPOSALS})
    assert answer.status == 201, answer.body
    first = answer.json()["id"]
    app.start_worker()
    parked = wait_until(lambda: Job.objects.filter(pk=first, status="waiting").values_list(
        "heartbeat_at", flat=True).first(), "the job to wait for its proposals", app)
    # A proposal's task beats on the job as it starts; from then on its fine-tune is under way.
    wait_until(lambda: Job.objects.get(pk=first).heartbeat_at > parked, "a proposal's task to start", app)
    answer = api.post_json(f"/api/v1/jobs/{first}/cancel", {})
    assert answer.status == 200 and answer.json()["job"]["status"] == "cancelled", answer.body
    (stopped,) = wait_until(lambda: job_events(
        first, r"Proposal \d+ of iteration 0 stopped after ([\d,]+) of 20,000 fine-tune steps: the job has ended\."),
        "the proposal's fine-tune to stop", app)
    done = int(stopped.group(1).replace(",", ""))
    assert done % HOOK_EVERY == 0 and done < 20_000

    # 2. The long-term fine-tune, run by the job itself: the worker is free again to take it.
    answer = api.post_json("/api/v1/jobs", {**inputs, **LONG_FINAL})
    assert answer.status == 201, answer.body
    second = answer.json()["id"]
    (started,) = wait_until(lambda: [m for m in job_events(second, r"Fine-tuning: ([\d,]+) steps\.")
                                     if int(m.group(1).replace(",", "")) > 5],
                            "the long-term fine-tune to start", app)
    total = int(started.group(1).replace(",", ""))
    answer = api.post_json(f"/api/v1/jobs/{second}/cancel", {})
    assert answer.status == 202, answer.body  # running: it stops at its next look
    wait_until(lambda: api.get(f"/api/v1/jobs/{second}").json()["status"] == "cancelled",
               "the running job to be cancelled", app)
    (stopped,) = job_events(second, r"Cancelled after ([\d,]+) of ([\d,]+) fine-tune steps\.")
    assert int(stopped.group(2).replace(",", "")) == total
    assert int(stopped.group(1).replace(",", "")) < total  # stopped inside the fine-tune, not after it
    assert api.get(f"/api/v1/jobs/{second}").json()["result"] == {}  # no finish recorded
    app.check_running(" after the cancels")  # the worker lives on
