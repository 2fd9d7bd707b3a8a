"""What a page or the API does to jobs: create one (``create_job``; ``queue_job``, which child jobs
use too) and cancel one (``cancel_job``: a queued or waiting job stops now, a running one at its
next step). The runner is ``adaptation.job_runner``; these only write rows and send it the job.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from adaptation import enqueue
from adaptation.events import publish
from adaptation.models import Dataset, Job, ModelUpload
from adaptation.netadapt.training import HOOK_EVERY
from devices.requests import drop_queued_requests


def queue_job(owner, *, model: ModelUpload, dataset: Dataset, device, settings: dict,
              kind: str = "adapt", parent: Job | None = None) -> Job:
    """A new job row, queued; the runner gets it once the row is committed.

    The one place jobs are created: ``create_job`` (a user's form) and ``start_child_job`` call it.
    ``settings`` is what ``Job.settings`` stores (``job_inputs.parse_settings`` reads it).
    """
    with transaction.atomic():
        job = Job.objects.create(owner=owner, kind=kind, parent=parent, model=model, dataset=dataset,
                                 device=device, settings=settings)
        enqueue.enqueue_job(job)
    return job


def create_job(user, form) -> Job:
    """The job of a valid ``JobForm``, queued; the runner gets it once the row is committed."""
    return queue_job(user, model=form.cleaned_data["model"], dataset=form.cleaned_data["dataset"],
                     device=form.cleaned_data["device"], settings=form.job_settings())


@dataclass(frozen=True)
class CancelOutcome:
    """``done``: "cancelled" (stopped now), "requested" (stops at its next step) or "inactive"."""

    done: str
    message: str


def start_child_job(parent: Job, kind: str, **options) -> Job:
    """A child job of ``parent`` (its model, data, device and settings, plus ``options``),
    enqueued once the transaction commits."""
    return queue_job(parent.owner, kind=kind, parent=parent, model=parent.model, dataset=parent.dataset,
                     device=parent.device, settings={**parent.settings, **options})


def cancel_job(job: Job) -> CancelOutcome:
    """Cancel ``job``: queued or waiting jobs stop now, a running one at its next check."""
    if not job.is_active:
        return CancelOutcome("inactive", f"Job #{job.pk} is already {job.get_status_display().lower()}.")
    # No worker holds a queued or waiting job (a claim moves it to running with a conditional
    # UPDATE, which this one races fairly): it stops here. A running job stops at its next check.
    cancelled = Job.objects.filter(pk=job.pk, status__in=(Job.Status.QUEUED, Job.Status.WAITING)).update(
        status=Job.Status.CANCELLED, cancel_requested=True, finished_at=timezone.now())
    if cancelled:
        drop_queued_requests(job.pk, "the job was cancelled")
        publish(job.pk, "job.status", {"status": Job.Status.CANCELLED, "error": ""})
        return CancelOutcome("cancelled", f"Job #{job.pk} is cancelled.")
    if not Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True):
        job.refresh_from_db()  # it ended between the two updates
        return CancelOutcome("inactive", f"Job #{job.pk} is already {job.get_status_display().lower()}.")
    publish(job.pk, "job.log", {"level": "warning",
                                "message": "Cancel requested: the job stops at its next step "
                                           f"(within {HOOK_EVERY} steps of a fine-tune)."})
    return CancelOutcome("requested", f"Cancel requested: job #{job.pk} stops at its next step "
                                      f"(within {HOOK_EVERY} steps of a fine-tune).")
