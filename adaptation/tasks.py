"""Celery tasks of adaptation jobs: thin glue, the work is in ``jobs`` and ``leases``.

- ``enqueue_job(job)``: send ``run_job`` once the current transaction commits.
- ``run_job(job_id)``: claim the job (one conditional UPDATE; someone else has it: return), then
  run it. ``acks_late`` and the settings' ``task_reject_on_worker_lost`` make the broker keep the
  message until the task returns; a job whose worker died is resumed from its checkpoint.
- ``check_model_upload(upload_id)``, ``check_dataset_upload(dataset_id, resolution, grayscale)``:
  an upload's check, on the ``checking`` queue (its own worker), sent by ``enqueue_check`` once
  the upload's row is committed; the work is in ``services.finish_model_check`` /
  ``finish_dataset_check``.
- ``sweep_stale_jobs()``: re-send ``run_job`` for running jobs whose lease lapsed and queued jobs
  left waiting (periodic, from Celery beat). Every worker also sweeps when it starts, and once
  more when the leases of a worker killed just before have lapsed, so jobs resume without beat.
"""
from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready
from django.db import connections, transaction
from django.utils import timezone

from adaptation.leases import claim_job, jobs_to_resume, lease_seconds
from adaptation.models import Job
from devices.requests import sweep_requests
from webapp.lib.claims import worker_name

logger = logging.getLogger(__name__)


def enqueue_job(job: Job) -> None:
    """Run the job in a worker once the transaction that created (or re-queued) it commits."""
    enqueue_job_id(job.pk)


def enqueue_job_id(job_id: int) -> None:
    """``enqueue_job`` by id."""
    transaction.on_commit(lambda: run_job.delay(job_id))


@shared_task(name="adaptation.tasks.run_job", acks_late=True)
def run_job(job_id: int) -> str | None:
    """Claim and run one job; returns how it ended, None when it was not ours to run."""
    from adaptation.child_jobs import RUNNERS  # the runner loads the engine: workers only

    job = claim_job(job_id, worker_name())
    if job is None:
        logger.info("job %s: not claimable (gone, ended, or running elsewhere)", job_id)
        return None
    return RUNNERS[job.kind](job, time_limit_error=SoftTimeLimitExceeded).run()


def enqueue_check(task_name: str, *args) -> None:
    """Send the checking task ``task_name`` (of this module) with ``args`` once the transaction
    that stored the upload commits."""
    task = {"check_model_upload": check_model_upload, "check_dataset_upload": check_dataset_upload}[task_name]
    transaction.on_commit(lambda: task.delay(*args))


@shared_task(name="adaptation.tasks.check_model_upload", acks_late=True)
def check_model_upload(upload_id: int) -> str | None:
    """Pre-flight a stored model upload in a bounded child; its row ends ready or rejected."""
    from adaptation.services import finish_model_check  # cycle: services sends this module's tasks
    return finish_model_check(upload_id)


@shared_task(name="adaptation.tasks.check_dataset_upload", acks_late=True)
def check_dataset_upload(dataset_id: int, resolution: int, grayscale: bool | None) -> str | None:
    """Extract and check a stored dataset zip in a bounded child; its row ends ready or rejected."""
    from adaptation.services import finish_dataset_check  # cycle: services sends this module's tasks
    return finish_dataset_check(dataset_id, resolution, grayscale)


@shared_task(name="adaptation.tasks.evaluate_proposal_task", acks_late=True)
def evaluate_proposal_task(job_id: int, iteration: int, index: int) -> str:
    """Fine-tune one proposal of a waiting job (a chord's member; see ``adaptation.proposals``)."""
    from adaptation.proposals import evaluate_for_job  # cycle: proposals sends the chord of these tasks
    return evaluate_for_job(job_id, iteration, index, worker_name())


@shared_task(name="adaptation.tasks.proposals_evaluated")
def proposals_evaluated(job_id: int, iteration: int) -> bool:
    """The chord's end: run the job again, which reads the proposals' files, once all exist."""
    from adaptation.proposals import all_evaluated  # cycle: proposals sends the chord of these tasks
    return all_evaluated(job_id, iteration) and resume_job(job_id, "evaluation")


def resume_job(job_id: int, kind: str) -> bool:
    """Re-enqueue a job that waits for ``kind`` ("measurement" or "evaluation"); False if it
    does not (it ended, was cancelled, or someone resumed it already)."""
    resumed = Job.objects.filter(pk=job_id, status=Job.Status.WAITING, waiting_kind=kind).update(
        status=Job.Status.QUEUED, heartbeat_at=timezone.now(), claimed_by="", attempts=0, waiting_kind="",
        waiting_for="")
    if resumed:
        enqueue_job_id(job_id)
    return bool(resumed)


@shared_task(name="adaptation.tasks.sweep_stale_jobs")
def sweep_stale_jobs() -> list[int]:
    """Re-send ``run_job`` for each job that needs a worker; the claim makes duplicates harmless."""
    job_ids = jobs_to_resume()
    for job_id in job_ids:
        run_job.delay(job_id)
    if job_ids:
        logger.info("sweep: re-sent jobs %s", job_ids)
    requests = sweep_requests()
    if requests["resent"] or requests["expired"]:
        logger.info("sweep: measurement requests re-sent %s, expired %s", requests["resent"], requests["expired"])
    return job_ids


@worker_ready.connect
def sweep_at_worker_start(sender=None, **kwargs) -> None:
    """Resume jobs a killed worker left running: now, and again once their leases have lapsed."""
    try:
        sweep_stale_jobs()
        sweep_stale_jobs.apply_async(countdown=lease_seconds() + 5)
    except Exception:  # the worker must start even when the database or broker hiccups
        logger.exception("sweep at worker start failed")
    finally:
        connections.close_all()  # the worker's main process keeps no connection open
