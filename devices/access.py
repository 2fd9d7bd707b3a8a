"""Which devices a user may see and change; views use these instead of bare queries."""
from django.db.models import Q
from django.http import Http404
from django.shortcuts import get_object_or_404

from devices.models import Device


def devices_visible_to(user):
    """The user's own devices and the shared system devices."""
    if not user.is_authenticated:
        return Device.objects.none()
    return Device.objects.filter(Q(owner=user) | Q(owner__isnull=True))


def get_device_for_user(user, pk, write: bool = False) -> Device:
    """The device ``pk`` if the user may see it (and change it, with ``write``); else 404.

    A stranger's device is a 404, not a 403, so ids reveal nothing. System devices are read-only.
    """
    device = get_object_or_404(devices_visible_to(user), pk=pk)
    if write and device.is_system:
        raise Http404("system devices are read-only")
    return device
