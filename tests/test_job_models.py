"""Jobs and what they record: one row per iteration and event number; owners only."""
from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.db.models.deletion import ProtectedError
from django.http import Http404

from adaptation.access import get_job_for_user, get_model_for_user
from adaptation.models import Iteration, Job, JobEvent, ModelUpload, Proposal

pytestmark = [pytest.mark.django_db, pytest.mark.services]


def iteration(job, number, **fields):
    return Iteration.objects.create(job=job, number=number, resource=1.5, resource_raw=2.0, macs=1000,
                                    params=100, holdout_accuracy=0.9, **fields)


def test_it_records_an_iteration_once(owner, make_job):
    job = make_job(owner)
    iteration(job, -1)
    iteration(job, 0)
    with pytest.raises(IntegrityError), transaction.atomic():
        iteration(job, 0)
    assert list(job.iterations.values_list("number", flat=True)) == [-1, 0]


def test_it_numbers_events_once_per_job(owner, make_job):
    job, other = make_job(owner), make_job(owner)
    JobEvent.objects.create(job=job, seq=1, type="job.started")
    JobEvent.objects.create(job=other, seq=1, type="job.started")
    with pytest.raises(IntegrityError), transaction.atomic():
        JobEvent.objects.create(job=job, seq=1, type="job.iteration")


def test_it_records_one_proposal_per_group(owner, make_job):
    first = iteration(make_job(owner), 0)
    Proposal.objects.create(iteration=first, group="features.1", channels=24, resource=1.2, chosen=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        Proposal.objects.create(iteration=first, group="features.1", channels=16, resource=1.1)


def test_it_gets_own_job(owner, make_job):
    job = make_job(owner)
    assert get_job_for_user(owner, job.pk) == job
    assert get_model_for_user(owner, job.model_id) == job.model


def test_it_checks_ownership(owner, stranger, make_job):
    theirs = make_job(stranger)
    with pytest.raises(Http404):
        get_job_for_user(owner, theirs.pk)
    with pytest.raises(Http404):
        get_model_for_user(owner, theirs.model_id)


@pytest.mark.parametrize("status, active", [("queued", True), ("running", True), ("waiting", True),
                                            ("finished", False), ("failed", False), ("cancelled", False)])
def test_it_knows_active_statuses(status, active):
    assert Job(status=status).is_active is active


def test_it_keeps_jobs_when_a_shared_device_is_deleted(owner, make_job, system_device):
    make_job(owner)
    with pytest.raises(ProtectedError):
        system_device.delete()


def test_it_deletes_a_models_jobs_with_it(owner, make_job):
    job = make_job(owner)
    iteration(job, 0)
    job.model.delete()
    assert not Job.objects.exists() and not Iteration.objects.exists()


def test_it_stores_files_under_the_owners_folders(owner, make_job):
    job = make_job(owner)
    upload = ModelUpload(owner=owner)
    assert ModelUpload.file.field.generate_filename(upload, "net.pt") == f"models/{owner.pk}/net.pt"
    point = Iteration(job=job, number=3)
    assert (Iteration.model_file.field.generate_filename(point, "iteration_3.pt")
            == f"jobs/{job.pk}/iteration_3.pt")
