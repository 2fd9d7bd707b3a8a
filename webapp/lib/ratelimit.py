"""Failed-attempt limits shared by every process: password log-in (page and ``/api/v1/token``)
and agent pairing, counted per client address and, for passwords, per account.

Counters live in Django's default cache, which is shared between processes: the database cache
table in the embedded mode (``migrate`` creates it), Redis in the production mode. A limit
counts attempts in fixed windows of ``window`` seconds and refuses once the current and the
previous window together hold ``limit`` of them: every attempt of the last ``window`` seconds
counts (crossing a window boundary resets nothing), and a refusal lasts at most two windows.

An attempt is counted *before* the credential is checked (``attempt``; atomic: Redis ``INCR``,
or one SQLite write transaction) and given back when it succeeded (``succeeded``), so parallel
guesses cannot slip past the count and only failures add up. A refused attempt is not counted.

The client address is ``REMOTE_ADDR``: what uvicorn puts there, which is a proxy's
``X-Forwarded-For`` only for the proxies it is told to trust (``NETADAPT_TRUSTED_PROXIES``).
"""
from __future__ import annotations

import hashlib
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import caches
from django.core.cache.backends.db import DatabaseCache
from django.db import connections, router, transaction

KEY_PREFIX = "ratelimit"


@dataclass(frozen=True)
class Refusal:
    """Too many failed attempts: ``retry_after`` whole seconds until the next one is counted."""

    retry_after: int
    what: str  # "from this address" or "for this account"

    def message(self, action: str) -> str:
        minutes = max(1, math.ceil(self.retry_after / 60))
        return (f"Too many failed {action} attempts {self.what}: try again in {minutes} "
                f"minute{'s' if minutes != 1 else ''}.")


@dataclass(frozen=True)
class Limit:
    """At most ``limit`` failed attempts per identity in ``window`` seconds (and the one before)."""

    scope: str
    limit: int
    window: int

    @property
    def whose(self) -> str:
        """Whose attempts it counts, for messages."""
        return "for this account" if self.scope.endswith("account") else "from this address"

    def _key(self, identity: str, index: int) -> str:
        digest = hashlib.sha256(identity.encode()).hexdigest()[:32]  # any text, a fixed-size key
        return f"{KEY_PREFIX}:{self.scope}:{digest}:{index}"

    def _window(self, now: float) -> tuple[int, float]:
        index = int(now // self.window)
        return index, (index + 1) * self.window - now

    def counted(self, identity: str, now: float | None = None) -> int:
        """Attempts counted against ``identity`` in this window and the previous one."""
        index, _ = self._window(time.time() if now is None else now)
        values = _cache().get_many([self._key(identity, index), self._key(identity, index - 1)])
        return sum(int(v) for v in values.values())


def _cache():
    return caches["default"]


def _atomic():
    """One write transaction around read-modify-write on a database cache: SQLite's IMMEDIATE
    mode makes concurrent processes take turns. Redis needs none (its INCR is atomic)."""
    cache = _cache()
    if isinstance(cache, DatabaseCache):
        return transaction.atomic(using=router.db_for_write(cache.cache_model_class))
    return nullcontext()


def _increment(key: str, delta: int, timeout: int) -> int:
    cache = _cache()
    if isinstance(cache, DatabaseCache):  # its incr would reset the expiry to the default; in _atomic
        value = max(0, int(cache.get(key) or 0) + delta)
        cache.set(key, value, timeout)
        return value
    if delta > 0 and cache.add(key, delta, timeout):
        return delta
    try:
        return cache.incr(key, delta)  # Redis INCRBY: atomic, keeps the expiry
    except ValueError:  # expired in between
        if delta > 0:
            cache.set(key, delta, timeout)
            return delta
        return 0


def attempt(counts: list[tuple[Limit, str]], now: float | None = None) -> Refusal | None:
    """Count one attempt against each (limit, identity); a Refusal (counting nothing) when any
    of them is used up. Call ``succeeded`` with the same list when the attempt succeeds.

    The attempt is counted first and checked after, so concurrent attempts each see their own
    count and at most ``limit`` of them pass.
    """
    now = time.time() if now is None else now
    with _atomic():
        for limit, identity in counts:
            index, left = limit._window(now)
            # Kept two windows: it is read as "the previous window" during the next one.
            _increment(limit._key(identity, index), 1, math.ceil(left + limit.window) + 1)
        refusal = None
        for limit, identity in counts:
            if limit.counted(identity, now) > limit.limit:
                index, left = limit._window(now)
                current = int(_cache().get(limit._key(identity, index)) or 0) - 1
                # The previous window drops out when this one ends; this one's count then
                # stays a window longer.
                retry = left + (limit.window if current >= limit.limit else 0)
                refusal = Refusal(max(1, math.ceil(retry)), limit.whose)
                break
        if refusal is not None:
            _give_back(counts, now)
    return refusal


def _give_back(counts: list[tuple[Limit, str]], now: float) -> None:
    for limit, identity in counts:
        index, left = limit._window(now)
        key = limit._key(identity, index)
        if int(_cache().get(key) or 0) > 0:
            _increment(key, -1, math.ceil(left + limit.window) + 1)


def succeeded(counts: list[tuple[Limit, str]], now: float | None = None) -> None:
    """Give back the attempts ``attempt`` counted: only failures add up."""
    with _atomic():
        _give_back(counts, time.time() if now is None else now)


def client_address(request) -> str:
    return request.META.get("REMOTE_ADDR") or "unknown"


def normalised_username(username: object) -> str:
    return str(username or "").strip().casefold()[:300]


# --------------------------------------------------------------------------- the limits


def password_limits(request, username: object) -> list[tuple[Limit, str]]:
    """Log-in page and token endpoint: per account and per client address."""
    window = settings.RATE_LIMIT_WINDOW_SECONDS
    counts = [(Limit("password-address", settings.LOGIN_FAILURES_PER_ADDRESS, window), client_address(request))]
    name = normalised_username(username)
    if name:
        counts.append((Limit("password-account", settings.LOGIN_FAILURES_PER_ACCOUNT, window), name))
    return counts


def pairing_limits(request) -> list[tuple[Limit, str]]:
    """Agent pairing: per client address."""
    return [(Limit("pairing-address", settings.PAIR_FAILURES_PER_ADDRESS, settings.RATE_LIMIT_WINDOW_SECONDS),
             client_address(request))]


def clear() -> int:
    """Forget every counter (an operator unlocking accounts; tests). Returns how many went."""
    cache = _cache()
    if isinstance(cache, DatabaseCache):
        with connections[router.db_for_write(cache.cache_model_class)].cursor() as cursor:
            table = cursor.db.ops.quote_name(cache._table)
            cursor.execute(f"DELETE FROM {table} WHERE cache_key LIKE %s", [f"%:{KEY_PREFIX}:%"])
            return cursor.rowcount
    location = settings.CACHES["default"].get("LOCATION")
    if "redis" in settings.CACHES["default"]["BACKEND"].lower() and location:
        import redis  # production only: the embedded mode has no Redis client to load

        client = redis.Redis.from_url(location)
        try:
            keys = list(client.scan_iter(match=f"*:{KEY_PREFIX}:*", count=1000))
            return client.delete(*keys) if keys else 0
        finally:
            client.close()
    cache.clear()  # a local-memory cache (tests that choose one): nothing else is in it
    return 0


# --------------------------------------------------------------------------- passwords

REFUSAL_ATTRIBUTE = "rate_limit_refusal"


class RateLimitedModelBackend(ModelBackend):
    """Django's username + password check, limited by ``password_limits``: every way in with a
    password (the log-in page, ``/api/v1/token``, the admin's log-in) passes here.

    A refused attempt does not check the password at all (it would tell a guesser whether the
    guess was right); it leaves its ``Refusal`` on the request (``refusal_of``) for the view to
    explain. Calls without a request (``manage.py``, tests' ``Client.login``) are not limited.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return super().authenticate(request, username, password, **kwargs)
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        counts = password_limits(request, username)
        refusal = attempt(counts)
        if refusal is not None:
            setattr(_http_request(request), REFUSAL_ATTRIBUTE, refusal)
            return None
        user = super().authenticate(request, username, password, **kwargs)
        if user is not None:
            succeeded(counts)
        return user


def _http_request(request):
    """Django's request under a REST framework one (attributes set on the wrapper stay there)."""
    return getattr(request, "_request", request)


def refusal_of(request) -> Refusal | None:
    """The refusal ``RateLimitedModelBackend`` left on this request, if any."""
    return getattr(_http_request(request), REFUSAL_ATTRIBUTE, None)
