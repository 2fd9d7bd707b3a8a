"""Websocket handshakes only from this site's own pages: the ``Origin`` check of webapp.asgi.

A browser lets any page open a websocket to any server and sends the session cookie with it;
only the ``Origin`` header says which site's page asked. ``SameOriginValidator`` lets a
handshake through when its Origin is the site itself -- the scheme of the connection (``wss``
is https; behind a TLS proxy, ``SECURE_PROXY_SSL_HEADER`` says so), the host *and the port* of
its ``Host`` header, which must be one of ``ALLOWED_HOSTS`` -- or one of
``CSRF_TRUSTED_ORIGINS`` (scheme, host and port; ``https://*.example.com`` covers subdomains).
That is the rule Django's CSRF check applies to the forms. Anything else, a Host that is not
allowed, and a handshake without an Origin or a Host, is refused before a consumer runs (HTTP 403). The agent program
sends its server's own origin (devices.agent.client.origin_of), so it passes the same check.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


def _header(scope: dict, name: bytes) -> str | None:
    """The header's value; None when it is missing or sent twice (ambiguous)."""
    values = [value for key, value in scope.get("headers") or [] if key.lower() == name]
    return values[0].decode("latin-1") if len(values) == 1 else None


def _secure(scope: dict) -> bool:
    if scope.get("scheme") in ("wss", "https"):
        return True
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        name, expected = proxy
        value = _header(scope, name.removeprefix("HTTP_").lower().replace("_", "-").encode())
        return value is not None and value.split(",", 1)[0].strip() == expected
    return False


def _origin(text: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin such as ``https://example.com:8443``; None if it is not one."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username is not None:
        return None
    return parts.scheme, parts.hostname.lower(), port if port is not None else DEFAULT_PORTS[parts.scheme]


def _own_origin(scope: dict) -> tuple[str, str, int] | None:
    """(scheme, host, port) of the site as this connection reached it; None for a Host header
    that is missing or not among ALLOWED_HOSTS."""
    host = _header(scope, b"host")
    if host is None:
        return None
    domain, port = split_domain_port(host.lower())
    allowed = settings.ALLOWED_HOSTS or ([".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    if not domain or not validate_host(domain, allowed):
        return None
    scheme = "https" if _secure(scope) else "http"
    try:
        number = int(port) if port else DEFAULT_PORTS[scheme]
    except ValueError:
        return None
    return scheme, domain.strip("[]"), number


def _trusted(origin: tuple[str, str, int]) -> bool:
    """Whether CSRF_TRUSTED_ORIGINS names this origin (scheme, host and port)."""
    scheme, host, port = origin
    for pattern in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in pattern
        trusted = _origin(pattern.replace("://*.", "://", 1) if wildcard else pattern)
        if trusted is None or trusted[0] != scheme or trusted[2] != port:
            continue
        if trusted[1] == host or (wildcard and is_same_domain(host, "." + trusted[1])):
            return True
    return False


def origin_allowed(scope: dict) -> bool:
    """Whether the handshake's Origin is the site itself or a trusted origin (module docstring)."""
    text = _header(scope, b"origin")
    origin = _origin(text) if text is not None else None
    if origin is None:
        return False
    own = _own_origin(scope)
    return own is not None and (origin == own or _trusted(origin))


class SameOriginValidator:
    """ASGI middleware for websockets: the application for an allowed origin, else a refusal."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator guards websocket connections only")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
