"""Sending adaptation's Celery tasks, by their pinned names, once the caller's transaction commits.

``adaptation.tasks`` runs the work of ``uploads`` (upload checks) and ``proposals`` (proposal
fine-tunes), and both send tasks too. Sending by name keeps the imports one-way:
``tasks -> uploads, proposals -> enqueue``. The names are the ``name=`` each task pins, the ones
the settings' routes and beat schedule use (``tests/test_task_names.py`` checks they are registered).
"""
from __future__ import annotations

from celery import chord, signature
from django.db import transaction
from django.utils import timezone

from adaptation.models import Job

RUN_JOB = "adaptation.tasks.run_job"
CHECKS = {"check_model_upload": "adaptation.tasks.check_model_upload",
          "check_dataset_upload": "adaptation.tasks.check_dataset_upload"}
EVALUATE_PROPOSAL = "adaptation.tasks.evaluate_proposal_task"
PROPOSALS_EVALUATED = "adaptation.tasks.proposals_evaluated"
TASK_NAMES = (RUN_JOB, *CHECKS.values(), EVALUATE_PROPOSAL, PROPOSALS_EVALUATED)


def enqueue_job(job: Job) -> None:
    """Run the job in a worker once the transaction that created (or re-queued) it commits."""
    enqueue_job_id(job.pk)


def enqueue_job_id(job_id: int) -> None:
    """``enqueue_job`` by id."""
    transaction.on_commit(lambda: signature(RUN_JOB, args=(job_id,)).delay())


def enqueue_check(task_name: str, *args) -> None:
    """Send the checking task ``task_name`` (a key of ``CHECKS``) with ``args`` once the
    transaction that stored the upload commits; the settings route it to the checking queue."""
    name = CHECKS[task_name]
    transaction.on_commit(lambda: signature(name, args=args).delay())


def send_chord(job_id: int, iteration: int, indices: list[int]) -> None:
    """One proposal fine-tune per index, then ``proposals_evaluated`` once all have returned."""
    members = [signature(EVALUATE_PROPOSAL, args=(job_id, iteration, index)) for index in indices]
    chord(members)(signature(PROPOSALS_EVALUATED, args=(job_id, iteration), immutable=True))


def resume_job(job_id: int, kind: str) -> bool:
    """Re-enqueue a job that waits for ``kind`` ("measurement" or "evaluation"); False if it
    does not (it ended, was cancelled, or someone resumed it already)."""
    resumed = Job.objects.filter(pk=job_id, status=Job.Status.WAITING, waiting_kind=kind).update(
        status=Job.Status.QUEUED, heartbeat_at=timezone.now(), claimed_by="", attempts=0, waiting_kind="",
        waiting_for="")
    if resumed:
        enqueue_job_id(job_id)
    return bool(resumed)
