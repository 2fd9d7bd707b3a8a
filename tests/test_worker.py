"""A real Celery worker process runs a job to the end; a SIGKILLed worker's job resumes in the next.

The worker is a separate process, so it must reach the test's database and broker:

- Embedded mode (SQLite, filesystem broker): pytest-django's SQLite test database lives in this
  process's memory, out of the worker's reach. So this test does not use it: it migrates a file
  database in a fresh data folder (``NETADAPT_DATA_DIR`` = tmp_path, with ``manage.py migrate`` in
  a subprocess, as a deployment would) and, for the test's duration, gives this process a second
  connection object pointed at that file (the session's in-memory test database and its
  connection are left untouched, and restored afterwards). The worker gets the same
  ``NETADAPT_DATA_DIR``, so database, media and broker folders are all shared; this process sends
  the task through a connection to that broker folder.
- Production mode (``DATABASE_URL`` and ``REDIS_URL`` set): pytest-django's test database is a real
  PostgreSQL database; the test uses it with committed transactions and passes its name to the
  worker in ``DATABASE_URL``. The broker is the shared test Redis database: its queue is purged
  first.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import onnxruntime as ort
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from adaptation.job_files import JobFiles
from adaptation.models import Iteration, Job, JobEvent, Proposal
from adaptation.tasks import run_job
from devices.models import Device, LatencyEntry
from webapp.celery import app as celery_app
from tests.e2e_support import live_database, worker_command
from tests.user_objects import builtin_dataset, queue_job, system_device, upload_model

PRODUCTION = bool(os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"))
pytestmark = [pytest.mark.slow, pytest.mark.services]
if PRODUCTION:  # committed rows in pytest-django's PostgreSQL test database
    pytestmark.append(pytest.mark.django_db(transaction=True))

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 420  # a loaded two-core machine: a worker start imports torch (tens of seconds)
LEASE_S = 15      # the JOB_LEASE_SECONDS the test's workers run with (tests/e2e_support.py)
# The 16 px test network runs in ~0.035 ms, where measurement noise on a loaded machine can
# leave a later iteration with no group able to meet its target: two iterations are enough here.
LATENCY = {"metric": "latency", "budget": 0.85, "initial_reduction": 0.06, "decay": 0.9,
           "short_term_steps": 5, "long_term_epochs": 0.2, "batch_size": 64, "max_iterations": 2,
           "holdout": 0.15}
# Long enough (several iterations of a few seconds) to be killed in the middle.
MACS = {"metric": "macs", "budget": 0.6, "initial_reduction": 0.1, "decay": 0.95,
        "short_term_steps": 10, "long_term_epochs": 0, "batch_size": 64, "max_iterations": 8,
        "holdout": 0.15}


@pytest.fixture
def live_db(tmp_path, django_db_blocker):
    """(worker environment, media folder), with this process's ORM on the worker's database."""
    with live_database(tmp_path, django_db_blocker) as (env, media):
        yield env, media


def send_run_job(job_id: int, data_dir: Path) -> None:
    """``run_job.delay`` to the worker's broker (the embedded mode's folders are the worker's)."""
    if PRODUCTION:
        run_job.delay(job_id)
        return
    broker = data_dir / "broker"
    options = {**settings.CELERY_BROKER_TRANSPORT_OPTIONS,
               "data_folder_in": str(broker / "queue"), "data_folder_out": str(broker / "queue"),
               "processed_folder": str(broker / "processed"), "control_folder": str(broker / "control")}
    with celery_app.connection_for_write(transport_options=options) as connection:
        run_job.apply_async((job_id,), connection=connection)


class Worker:
    """``celery worker`` in its own process group (so SIGKILL takes its pool children too)."""

    def __init__(self, name: str, env: dict, logs: Path, device_id: int) -> None:
        self.log = logs / f"worker-{name}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                ["nice", "-n", "15", *worker_command(name, device_id)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # warm shutdown: nothing is running now
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_worker(live_db, scene, tmp_path):
    workers: list[Worker] = []

    def start(name: str) -> Worker:
        workers.append(Worker(name, live_db[0], tmp_path, scene.device.pk))
        return workers[-1]

    yield start
    for worker in workers:
        worker.stop()


def wait_for(condition, what: str, worker: Worker | None):
    """Poll the database until ``condition()`` is truthy (failing fast if the worker dies)."""
    deadline = time.monotonic() + DEADLINE_S
    logs = worker.tail if worker else (lambda: "")
    while True:
        result = condition()
        if result:
            return result
        assert worker is None or worker.process.poll() is None, \
            f"the worker exited while waiting for {what}:\n{logs()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{logs()}"
        time.sleep(0.1)


def ended(job: Job):
    job.refresh_from_db()
    return job.status in ("finished", "failed", "cancelled")


def check_recorded_once(job: Job) -> int:
    """Iterations -1..n-1 and their events exactly once, events numbered 1..N; returns n."""
    assert job.status == "finished", job.error
    n = job.result["iterations"]
    numbers = list(Iteration.objects.filter(job=job).order_by("number").values_list("number", flat=True))
    assert numbers == list(range(-1, n))
    events = list(JobEvent.objects.filter(job=job).order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert sorted(e.payload["number"] for e in events if e.type == "job.iteration") == list(range(n))
    assert [e.type for e in events].count("job.start") == 1
    assert [e.type for e in events][-2:] == ["job.finish", "job.status"]
    return n


@dataclass
class Scene:
    data_dir: Path
    media: Path
    device: Device
    spec: object
    new_job: Callable[[dict], Job]


@pytest.fixture
def scene(live_db, tiny_cnn, settings) -> Scene:
    """A user with a tiny model on the shared database, the system device, the digits dataset:
    the model uploaded and the shared rows bootstrapped by the functions the app uses, into the
    worker's media folder."""
    env, media = live_db
    settings.MEDIA_ROOT = media
    spec, weights = tiny_cnn
    owner = get_user_model().objects.create_user("alice", password="x")
    device = system_device()
    dataset = builtin_dataset("digits")
    upload = upload_model(owner, spec, weights, name="tiny")

    def new_job(job_settings: dict) -> Job:
        return queue_job(owner, upload, dataset, device, job_settings)
    return Scene(Path(env["NETADAPT_DATA_DIR"]), media, device, spec, new_job)


def test_a_worker_runs_jobs_and_a_killed_workers_job_resumes(scene, start_worker):
    data_dir, media, device, spec, new_job = (scene.data_dir, scene.media, scene.device, scene.spec,
                                              scene.new_job)

    # 1. A latency job runs to the end in the worker, measuring on this server's CPU.
    first = new_job(LATENCY)
    worker = start_worker("one")
    send_run_job(first.pk, data_dir)
    wait_for(lambda: ended(first), "the first job to end", worker)
    check_recorded_once(first)
    assert first.attempts == 1
    assert LatencyEntry.objects.filter(device=device).exists()
    final_onnx = media / JobFiles(first.pk).final_names()["onnx"]
    session = ort.InferenceSession(str(final_onnx), providers=["CPUExecutionProvider"])
    assert session.run(None, {session.get_inputs()[0].name: spec.example_input().numpy()})[0].shape == (1, 10)

    # 2. The worker is killed (with its pool process) in the middle of a job...
    second = new_job(MACS)
    send_run_job(second.pk, data_dir)
    wait_for(lambda: JobEvent.objects.filter(job=second, type="job.iteration").exists(),
             "the second job's first iteration", worker)
    worker.kill()
    stored_at_kill = Iteration.objects.filter(job=second).count()
    second.refresh_from_db()
    # Killed running the job itself (its lease lapses) or one of its proposals (the job waits and
    # its proposals' heartbeat stops): either way a new worker takes over.
    assert second.status in ("running", "waiting"), "the job ended before the worker was killed: make it longer"
    killed_in = second.status
    wait_for(lambda: Job.objects.get(pk=second.pk).heartbeat_at
             < timezone.now() - timedelta(seconds=LEASE_S + 1), "the lease to lapse", None)
    worker = start_worker("two")
    wait_for(lambda: ended(second), "the resumed job to end", worker)
    n = check_recorded_once(second)
    assert n + 1 > stored_at_kill  # the new worker did iterations of its own
    logs = [e.payload["message"] for e in JobEvent.objects.filter(job=second, type="job.log")]
    if killed_in == "running":
        assert any("resuming after iteration" in message for message in logs), logs
    # Killed while its proposals were queued or being fine-tuned: the new worker takes the queued
    # ones, and the sweep sends again those lost with the killed worker ("sent again" in the log).


def test_the_proposals_of_an_iteration_spread_over_two_workers(scene, start_worker):
    one, two = start_worker("one"), start_worker("two")
    for worker in (one, two):
        wait_for(lambda: " ready." in worker.tail(), f"worker {worker.log.stem} to start", worker)
    job = scene.new_job({**MACS, "max_iterations": 2, "short_term_steps": 3})  # fine-tunes need not be long here
    send_run_job(job.pk, scene.data_dir)
    wait_for(lambda: ended(job), "the job to end", one)
    check_recorded_once(job)
    workers = {p.record.get("worker") for p in Proposal.objects.filter(iteration__job=job)}
    assert None not in workers
    assert {w.split(":")[0] for w in workers} == {socket.gethostname()} and len(workers) == 2, workers
