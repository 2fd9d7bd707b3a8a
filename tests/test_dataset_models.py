"""Datasets: built-in ones are shared and read-only; folder datasets belong to one user."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import IntegrityError, transaction
from django.http import Http404

from adaptation.access import datasets_visible_to, get_dataset_for_user
from adaptation.models import Dataset
from tests.user_objects import upload_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media(media):
    """Uploads go to the test's own media folder."""


def folder_dataset(user, name="flowers"):
    """An image-folder dataset uploaded by ``user`` through the upload service."""
    return upload_dataset(user, name=name)


def test_it_shows_own_and_builtin_datasets_only(owner, stranger, digits_dataset):
    own = folder_dataset(owner)
    folder_dataset(stranger)
    assert set(datasets_visible_to(owner)) == {digits_dataset, own}


def test_it_shows_nothing_to_anonymous_users(digits_dataset):
    assert list(datasets_visible_to(AnonymousUser())) == []


def test_it_gets_own_dataset_for_writing(owner):
    own = folder_dataset(owner)
    assert get_dataset_for_user(owner, own.pk, write=True) == own


def test_it_gets_a_builtin_dataset_for_reading(owner, digits_dataset):
    dataset = get_dataset_for_user(owner, digits_dataset.pk)
    assert dataset.is_builtin


def test_it_refuses_to_write_a_builtin_dataset(owner, digits_dataset):
    with pytest.raises(Http404):
        get_dataset_for_user(owner, digits_dataset.pk, write=True)


@pytest.mark.parametrize("write", [False, True])
def test_it_checks_ownership(owner, stranger, write):
    theirs = folder_dataset(stranger)
    with pytest.raises(Http404):
        get_dataset_for_user(owner, theirs.pk, write=write)


def test_it_keeps_one_row_per_builtin_dataset(digits_dataset):
    with pytest.raises(IntegrityError), transaction.atomic():
        Dataset.objects.create(owner=None, name="digits again", kind="builtin", builtin_name="digits")


@pytest.mark.parametrize("kind, builtin_name", [("builtin", ""), ("folder", "digits")])
def test_it_matches_builtin_name_and_kind(owner, kind, builtin_name):
    with pytest.raises(IntegrityError), transaction.atomic():
        Dataset.objects.create(owner=owner, name="odd", kind=kind, builtin_name=builtin_name)


def test_it_stores_archives_under_the_owners_folder(owner):
    dataset = Dataset(owner=owner, name="x", kind="folder")
    assert Dataset.archive.field.generate_filename(dataset, "x.zip") == f"datasets/{owner.pk}/x.zip"
