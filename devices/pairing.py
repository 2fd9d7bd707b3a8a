"""Pairing an agent program with a device: one-time codes, device tokens, revocation.

"Add device" creates an ``agent`` device ("Add a phone" a ``phone`` one, whose browser page pairs
by the URL of a QR code: ``pairing_url``) and a code valid ``PAIRING_CODE_MINUTES``; the agent
sends the code once (``redeem``) and receives a token it keeps. Only SHA-256 hashes of codes and
tokens are stored, so a database leak gives neither away. Revoking empties the token hash: the
agent is refused from then on and must be paired again with a new code.

Redeeming a code ends every other unused code of the same device: an older code shown on a
screen earlier cannot pair a second agent later and take the live token over.
"""
from __future__ import annotations

import hashlib
import ipaddress
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from devices.models import Device, Pairing

#: Letters and digits that cannot be mistaken for one another when typed from a screen.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 10


class PairingError(Exception):
    """The code cannot pair a device; the message says why."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def normalise_code(code: str) -> str:
    """Codes are shown in groups (``ABCDE-FGHJK``); typed case and dashes do not matter."""
    return "".join(ch for ch in code.upper() if ch.isalnum())


def code_minutes() -> float:
    return float(settings.PAIRING_CODE_MINUTES)


def new_pairing(device: Device) -> tuple[str, Pairing]:
    """A fresh one-time code for ``device`` (returned once, stored hashed) and its row."""
    if device.kind not in Device.REMOTE_KINDS:
        raise PairingError("only agent and phone devices are paired; the server's CPU needs no pairing")
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    now = timezone.now()
    pairing = Pairing.objects.create(device=device, code_hash=digest(code), created=now,
                                     expires_at=now + timedelta(minutes=code_minutes()))
    return f"{code[:5]}-{code[5:]}", pairing


def redeem(code: str, facts: dict | None = None) -> tuple[Device, str]:
    """Use a code once: the device it pairs and a new token (replacing any earlier one).

    The device's other unused codes are spent at the same time, so none of them can replace
    this token later.
    """
    now = timezone.now()
    with transaction.atomic():
        pairing = (Pairing.objects.select_for_update().select_related("device")
                   .filter(code_hash=digest(normalise_code(code))).first())
        if pairing is None or pairing.used_at is not None:
            raise PairingError("unknown or already used pairing code: show a new one on the "
                               "device's page")
        if pairing.expires_at <= now:
            raise PairingError(f"this pairing code expired at {pairing.expires_at:%H:%M} UTC: "
                               "show a new one on the device's page")
        token = secrets.token_urlsafe(32)
        device = pairing.device
        device.token_hash, device.token_created = digest(token), now
        if facts:
            device.facts = dict(facts)
        device.save(update_fields=["token_hash", "token_created", "facts"])
        pairing.used_at = now
        pairing.save(update_fields=["used_at"])
        Pairing.objects.filter(device=device, used_at__isnull=True).update(used_at=now)
    return device, token


def device_for_token(token: str | None) -> Device | None:
    """The paired device of a token, or None (unknown, revoked, or no token)."""
    if not token:
        return None
    return Device.objects.filter(kind__in=Device.REMOTE_KINDS, token_hash=digest(token)).exclude(token_hash="").first()


def revoke(device: Device) -> None:
    """Refuse the device's agent from now on (it must be paired again)."""
    Device.objects.filter(pk=device.pk).update(token_hash="", token_created=None, status=Device.Status.OFFLINE)
    Pairing.objects.filter(device=device, used_at__isnull=True).update(used_at=timezone.now())


#: The phone page's path; the pairing code follows in the URL's fragment.
PHONE_PATH = "/devices/phone/"


def public_base_url(fallback: str) -> str:
    """The address phones reach this server at: ``PUBLIC_BASE_URL`` when set, else ``fallback``
    (the address the owner's browser used), without a trailing slash."""
    return (settings.PUBLIC_BASE_URL or fallback).rstrip("/")


def pairing_url(base: str, code: str) -> str:
    """The phone page's URL for a one-time code. The code is in the fragment (``#pair=...``): a
    browser never sends a fragment to the server, so no access log or proxy ever sees it."""
    return f"{base.rstrip('/')}{PHONE_PATH}#pair={code}"


def is_loopback(base: str) -> bool:
    """Whether ``base`` names this machine only (a phone cannot reach it)."""

    host = (urlsplit(base).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
