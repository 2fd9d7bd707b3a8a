"""What a user may see of models, datasets and jobs; views use these instead of bare queries.

A stranger's object is a 404, not a 403, so ids reveal nothing.
"""
from django.db.models import Q
from django.http import Http404
from django.shortcuts import get_object_or_404

from adaptation.models import Dataset, Job, ModelUpload


def datasets_visible_to(user):
    """The user's own datasets and the built-in ones."""
    if not user.is_authenticated:
        return Dataset.objects.none()
    return Dataset.objects.filter(Q(owner=user) | Q(owner__isnull=True))


def get_dataset_for_user(user, pk, write: bool = False) -> Dataset:
    """The dataset ``pk`` if visible (and changeable, with ``write``: built-ins are read-only)."""
    dataset = get_object_or_404(datasets_visible_to(user), pk=pk)
    if write and dataset.is_builtin:
        raise Http404("built-in datasets are read-only")
    return dataset


def get_model_for_user(user, pk) -> ModelUpload:
    return get_object_or_404(ModelUpload, pk=pk, owner_id=user.pk)


def get_job_for_user(user, pk) -> Job:
    return get_object_or_404(Job, pk=pk, owner_id=user.pk)
