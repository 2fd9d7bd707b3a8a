"""Devices: who sees which, the read-only system device, and the bootstrap command."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.http import Http404

from adaptation.models import Dataset
from adaptation.netadapt.data import fashion_mnist_available
from devices.access import devices_visible_to, get_device_for_user
from devices.models import SYSTEM_DEVICE_NAME, Device
from tests.user_objects import add_device

pytestmark = [pytest.mark.django_db, pytest.mark.services]


@pytest.fixture
def own_device(owner):
    return add_device(owner, name="Pixel 7", threads=2)


@pytest.fixture
def strangers_device(stranger):
    return add_device(stranger, name="Raspberry Pi")


def test_it_shows_own_and_system_devices_only(owner, system_device, own_device, strangers_device):
    assert set(devices_visible_to(owner)) == {system_device, own_device}


def test_it_shows_nothing_to_anonymous_users(system_device):
    assert list(devices_visible_to(AnonymousUser())) == []


def test_it_gets_own_device_for_writing(owner, own_device):
    assert get_device_for_user(owner, own_device.pk, write=True) == own_device


def test_it_gets_the_system_device_for_reading(owner, system_device):
    device = get_device_for_user(owner, system_device.pk)
    assert device == system_device and device.is_system


@pytest.mark.parametrize("write", [False, True])
def test_it_checks_ownership(owner, strangers_device, write):
    with pytest.raises(Http404):
        get_device_for_user(owner, strangers_device.pk, write=write)


def test_it_refuses_to_write_the_system_device(owner, system_device):
    with pytest.raises(Http404):
        get_device_for_user(owner, system_device.pk, write=True)


def test_it_404s_for_a_missing_device(owner):
    with pytest.raises(Http404):
        get_device_for_user(owner, 987654)


def test_it_requires_at_least_one_thread(owner):
    with pytest.raises(IntegrityError), transaction.atomic():
        Device.objects.create(owner=owner, name="zero", threads=0)


def test_it_keeps_one_system_device_per_name(system_device):
    with pytest.raises(IntegrityError), transaction.atomic():
        Device.objects.create(owner=None, name=SYSTEM_DEVICE_NAME)


def test_it_lets_users_reuse_the_system_device_name(owner, system_device):
    assert add_device(owner, name=SYSTEM_DEVICE_NAME).pk != system_device.pk


def test_it_offers_the_engine_runtimes_and_the_browsers():
    from devices.measure.runtimes import RUNTIMES

    assert {name for name, _ in Device.RUNTIME_CHOICES} == {*RUNTIMES, "onnxruntime-web"}


def test_it_bootstraps_idempotently():
    call_command("bootstrap", stdout=open("/dev/null", "w"))
    call_command("bootstrap", stdout=open("/dev/null", "w"))
    system = Device.objects.get(owner=None)
    assert (system.name, system.kind, system.runtime, system.threads) == (SYSTEM_DEVICE_NAME, "local", "onnxruntime", 1)
    assert {"os", "cores", "onnxruntime", "torch"} <= set(system.facts)
    builtin = {d.builtin_name: d for d in Dataset.objects.filter(owner=None)}
    expected = {"digits", "fashion_mnist"} if fashion_mnist_available() else {"digits"}
    assert set(builtin) == expected
    digits = builtin["digits"].summary
    assert sum(digits["sizes"].values()) == 1797
    assert (digits["num_classes"], digits["in_channels"], digits["resolution"]) == (10, 1, 8)
