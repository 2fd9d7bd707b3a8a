"""Celery tasks of adaptation jobs: thin glue, the work is in ``job_runner``, ``leases``, ``uploads``
and ``proposals``. Every task pins its ``name=``; ``adaptation.enqueue`` sends them by those names.

- ``run_job(job_id)``: claim the job (one conditional UPDATE; someone else has it: return), then
  run it. ``acks_late`` and the settings' ``task_reject_on_worker_lost`` make the broker keep the
  message until the task returns; a job whose worker died is resumed from its checkpoint.
- ``check_model_upload(upload_id)``, ``check_dataset_upload(dataset_id, resolution, grayscale)``:
  an upload's check, on the ``checking`` queue (its own worker), sent by ``enqueue.enqueue_check`` once
  the upload's row is committed; the work is in ``uploads.finish_model_check`` /
  ``finish_dataset_check``.
- ``sweep_stale_jobs()``: re-send ``run_job`` for running jobs whose lease lapsed and queued jobs
  left waiting, sweep measurement requests (devices.requests) and mark silent devices offline
  (devices.presence) (periodic, from Celery beat). Every worker also sweeps when it starts, and once
  more when the leases of a worker killed just before have lapsed, so jobs resume without beat.
"""
from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready
from django.db import connections

from adaptation.enqueue import resume_job
from adaptation.leases import claim_job, jobs_to_resume, lease_seconds
from adaptation.proposals import all_evaluated, evaluate_for_job
from adaptation.uploads import finish_dataset_check, finish_model_check
from devices.presence import mark_silent_devices_offline, silent_seconds
from devices.requests import sweep_requests
from webapp.lib.claims import worker_name

logger = logging.getLogger(__name__)


@shared_task(name="adaptation.tasks.run_job", acks_late=True)
def run_job(job_id: int) -> str | None:
    """Claim and run one job; returns how it ended, None when it was not ours to run."""
    from adaptation.child_jobs import RUNNERS  # the runner loads the engine: workers only

    job = claim_job(job_id, worker_name())
    if job is None:
        logger.info("job %s: not claimable (gone, ended, or running elsewhere)", job_id)
        return None
    return RUNNERS[job.kind](job, time_limit_error=SoftTimeLimitExceeded).run()


@shared_task(name="adaptation.tasks.check_model_upload", acks_late=True)
def check_model_upload(upload_id: int) -> str | None:
    """Pre-flight a stored model upload in a bounded child; its row ends ready or rejected."""
    return finish_model_check(upload_id)


@shared_task(name="adaptation.tasks.check_dataset_upload", acks_late=True)
def check_dataset_upload(dataset_id: int, resolution: int, grayscale: bool | None) -> str | None:
    """Extract and check a stored dataset zip in a bounded child; its row ends ready or rejected."""
    return finish_dataset_check(dataset_id, resolution, grayscale)


@shared_task(name="adaptation.tasks.evaluate_proposal_task", acks_late=True)
def evaluate_proposal_task(job_id: int, iteration: int, index: int) -> str:
    """Fine-tune one proposal of a waiting job (a chord's member; see ``adaptation.proposals``)."""
    return evaluate_for_job(job_id, iteration, index, worker_name())


@shared_task(name="adaptation.tasks.proposals_evaluated")
def proposals_evaluated(job_id: int, iteration: int) -> bool:
    """The chord's end: run the job again, which reads the proposals' files, once all exist."""
    return all_evaluated(job_id, iteration) and resume_job(job_id, "evaluation")


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
    silent = mark_silent_devices_offline()
    if silent:
        logger.info("sweep: devices %s silent for %g s, marked offline", silent, silent_seconds())
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
