"""Worker claims: which process of which host holds a row (a job, a local measurement request).

A worker writes ``worker_name()`` (``<hostname>:<pid>``) into the row it claims; a sweep on the
same host re-queues what ``claim_is_gone`` says a dead process held, and re-sends what sat queued
past ``requeue_seconds()`` (``JOB_REQUEUE_SECONDS``). Jobs (``adaptation.leases``) and local
measurement requests (``devices.requests``) share these rules.
"""
from __future__ import annotations

import os
import socket

from django.conf import settings


def requeue_seconds() -> float:
    return float(settings.JOB_REQUEUE_SECONDS)


def worker_name() -> str:
    """``<hostname>:<pid>`` of this process, what a claimed row's ``claimed_by`` holds."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process whose parent died too may linger as a zombie nobody reaps
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def claim_is_gone(claimed_by: str) -> bool:
    """Whether ``claimed_by`` names a process of this host that no longer runs.

    Assumes one hostname names one process namespace (hosts, containers and pods do; give
    containers that share a hostname distinct ones). Claims of other hosts are never "gone".
    """
    host, _, pid = claimed_by.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and not _process_exists(int(pid))
