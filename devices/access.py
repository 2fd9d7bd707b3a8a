"""Which devices a user may see and change; views use these instead of bare queries."""
from __future__ import annotations

from django.db.models import QuerySet

from devices.models import Device
from webapp.lib.accounts import get_visible_or_404, owned_or_shared


def devices_visible_to(user) -> QuerySet:
    """The user's own devices and the shared system devices."""
    return owned_or_shared(Device, user)


def get_device_for_user(user, pk, write: bool = False) -> Device:
    """The device ``pk`` if the user may see it (and change it, with ``write``); else 404.

    A stranger's device is a 404, not a 403, so ids reveal nothing. System devices are read-only.
    """
    return get_visible_or_404(Device, user, pk, write=write, read_only="system devices are read-only")
