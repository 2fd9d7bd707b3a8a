"""Whether a remote device is there: its status as the sweep corrects it.

A connection's end marks its device offline (devices.consumers). A web process that dies without
ending its connections (killed, out of memory) cannot: its devices would show "online" or
"busy" for good. The periodic sweep (adaptation.tasks.sweep_stale_jobs) marks offline every
remote device silent for ``SILENT_HEARTBEATS`` heartbeats; a device still connected sets its
status again with its next heartbeat. The margin is wide because a phone's browser may stretch
the timers of a hidden tab to a minute.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from devices.models import Device

#: Heartbeats a connected device may miss before the sweep calls it offline.
SILENT_HEARTBEATS = 8


def silent_seconds() -> float:
    return SILENT_HEARTBEATS * float(settings.AGENT_HEARTBEAT_SECONDS)


def mark_silent_devices_offline(now: datetime | None = None) -> list[int]:
    """Mark offline the remote devices not heard from for ``silent_seconds()``; their ids."""
    cutoff = (now or timezone.now()) - timedelta(seconds=silent_seconds())
    silent = (Device.objects.filter(kind__in=Device.REMOTE_KINDS, last_seen__lt=cutoff)
              .exclude(status=Device.Status.OFFLINE))
    ids = sorted(silent.values_list("pk", flat=True))
    # The cutoff again in the update: a heartbeat that lands meanwhile keeps its device.
    Device.objects.filter(pk__in=ids, last_seen__lt=cutoff).update(status=Device.Status.OFFLINE)
    return ids
