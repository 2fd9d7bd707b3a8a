"""Job leases: which worker runs a job, claimed with one conditional UPDATE and kept by heartbeats.

A worker claims a job that is ``queued``, or ``running`` under a lease that has lapsed: its
``heartbeat_at`` is older than ``JOB_LEASE_SECONDS``, or the claim names a process of this host
that no longer exists and has missed two heartbeats. The claim sets ``claimed_by`` to
``<hostname>:<pid>``; from then on every write the worker makes is conditional on still holding
the claim, so a worker that lost its job (to a sweep after a stall, or because the row was deleted)
notices at its next step and stops without touching anything.

The worker renews the lease at every engine record and from a ``LeaseKeeper`` thread every
``JOB_HEARTBEAT_SECONDS`` while a record is being computed (an iteration takes minutes).

A queued job's ``heartbeat_at`` records when the sweep last re-sent its message (a queued job has
no lease), so a sweep does not pile up duplicate messages behind a long job.
"""
from __future__ import annotations

import logging
import socket
import threading
from datetime import datetime, timedelta
from typing import Callable

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import DateTimeField, F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from adaptation.models import Job
from webapp.lib.claims import claim_is_gone, requeue_seconds

logger = logging.getLogger(__name__)

#: A queued job is re-sent by a sweep only once it is this old (its first message may be in flight).
QUEUED_GRACE_SECONDS = 60
#: Job kinds a runner exists for (``adaptation.child_jobs.RUNNERS``); others are never claimed.
RUNNABLE_KINDS = ("adapt", "finetune", "baseline")


def lease_seconds() -> float:
    return float(settings.JOB_LEASE_SECONDS)


def heartbeat_seconds() -> float:
    return float(settings.JOB_HEARTBEAT_SECONDS)


def max_attempts() -> int:
    return int(settings.JOB_MAX_ATTEMPTS)


def _lapsed(now: datetime) -> Q:
    """Running jobs whose lease has lapsed, whoever held it."""
    return Q(status=Job.Status.RUNNING) & (Q(heartbeat_at__isnull=True)
                                  | Q(heartbeat_at__lt=now - timedelta(seconds=lease_seconds())))


def _gone_grace(now: datetime) -> datetime:
    return now - timedelta(seconds=2 * heartbeat_seconds())


def claim_job(job_id: int, worker: str) -> Job | None:
    """Claim the job for ``worker``; the claimed row, or None when it is not ours to run."""
    now = timezone.now()
    claimable = Q(status=Job.Status.QUEUED) | _lapsed(now)
    current = Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).values_list("claimed_by", "heartbeat_at").first()
    if current and current[1] and current[1] < _gone_grace(now) and claim_is_gone(current[0]):
        claimable |= Q(status=Job.Status.RUNNING, claimed_by=current[0], heartbeat_at=current[1])
    claimed = Job.objects.filter(claimable, pk=job_id, kind__in=RUNNABLE_KINDS).update(
        status=Job.Status.RUNNING, claimed_by=worker, heartbeat_at=now, attempts=F("attempts") + 1,
        started_at=Coalesce("started_at", Value(now, output_field=DateTimeField())))
    if not claimed:
        return None
    return Job.objects.select_related("model", "dataset", "device").get(pk=job_id)


def renew_lease(job_id: int, worker: str) -> bool:
    """Extend the lease; False when ``worker`` no longer holds the job (or it was deleted)."""
    return bool(Job.objects.filter(pk=job_id, claimed_by=worker, status=Job.Status.RUNNING)
                .update(heartbeat_at=timezone.now()))


def jobs_to_resume(now: datetime | None = None) -> list[int]:
    """Ids of jobs that need a (new) message: lapsed leases, and queued jobs left waiting.

    A queued job is stamped as it is picked (one conditional UPDATE), so two sweeps running at
    once do not both re-send it, and it is picked again only after ``JOB_REQUEUE_SECONDS``.
    """
    now = now or timezone.now()
    runnable = Job.objects.filter(kind__in=RUNNABLE_KINDS)
    ids = list(runnable.filter(_lapsed(now)).values_list("pk", flat=True))
    host_claims = (runnable.filter(status=Job.Status.RUNNING, heartbeat_at__lt=_gone_grace(now),
                                   claimed_by__startswith=f"{socket.gethostname()}:")
                   .exclude(pk__in=ids).values_list("pk", "claimed_by"))
    ids += [pk for pk, claimed_by in host_claims if claim_is_gone(claimed_by)]
    waiting = Q(status=Job.Status.QUEUED, created__lt=now - timedelta(seconds=QUEUED_GRACE_SECONDS)) & (
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=now - timedelta(seconds=requeue_seconds())))
    for pk in runnable.filter(waiting).values_list("pk", flat=True):
        if runnable.filter(waiting, pk=pk).update(heartbeat_at=now):
            ids.append(pk)
    # Proposals fine-tuned by other tasks beat on the waiting job; silence means they were lost
    # (a killed worker; the filesystem transport does not redeliver): run the job to resend them.
    stalled = Q(status=Job.Status.WAITING, waiting_kind="evaluation",
                heartbeat_at__lt=now - timedelta(seconds=lease_seconds()))
    for pk in runnable.filter(stalled).values_list("pk", flat=True):
        if runnable.filter(stalled, pk=pk).update(status=Job.Status.QUEUED, heartbeat_at=now, claimed_by="", attempts=0):
            ids.append(pk)
    return sorted(ids)


def beat_waiting(job_id: int) -> bool:
    """A task working for a job says it is alive (the stamp counts while the job waits); False
    once the job has ended, so the task may stop."""
    Job.objects.filter(pk=job_id, status=Job.Status.WAITING).update(heartbeat_at=timezone.now())
    return Job.objects.filter(pk=job_id, status__in=Job.ACTIVE_STATUSES).exists()


class LeaseKeeper:
    """Renews a job's lease from a daemon thread while the worker computes a step.

    The thread has its own database connection (Django's are per thread) and closes it on exit.
    ``lost`` is set when the lease is gone; the runner checks it at its next step. ``renew`` (by
    default ``renew_lease``) is what a beat does; it returns False once the lease is gone. A database
    error is logged and retried at the next beat: the lease is long enough to ride it out.
    """

    def __init__(self, job_id: int, worker: str, interval: float | None = None,
                 renew: Callable[[], bool] | None = None) -> None:
        self.job_id, self.worker = job_id, worker
        self.renew = renew or (lambda: renew_lease(job_id, worker))
        self.interval = heartbeat_seconds() if interval is None else interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-job-{job_id}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    if not self.renew():
                        self.lost.set()
                        return
                except DatabaseError as error:
                    logger.warning("job %s: heartbeat failed, retrying: %s", self.job_id, error)
        finally:
            connection.close()
