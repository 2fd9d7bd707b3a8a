"""What a user may see of models, datasets and jobs; views use these instead of bare queries.

A stranger's object is a 404, not a 403, so ids reveal nothing (``webapp.lib.accounts``).
"""
from __future__ import annotations

from django.db.models import QuerySet

from adaptation.models import Dataset, Job, ModelUpload
from webapp.lib.accounts import get_owned_or_404, get_visible_or_404, owned_or_shared


def datasets_visible_to(user) -> QuerySet:
    """The user's own datasets and the built-in ones."""
    return owned_or_shared(Dataset, user)


def get_dataset_for_user(user, pk, write: bool = False) -> Dataset:
    """The dataset ``pk`` if visible (and changeable, with ``write``: built-ins are read-only)."""
    return get_visible_or_404(Dataset, user, pk, write=write, read_only="built-in datasets are read-only")


def get_model_for_user(user, pk) -> ModelUpload:
    return get_owned_or_404(ModelUpload, user, pk)


def get_job_for_user(user, pk) -> Job:
    return get_owned_or_404(Job, user, pk)
