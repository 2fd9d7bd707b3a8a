"""Cross-origin isolation for the phone page: WebAssembly threads and a fine clock.

A browser gives a page ``SharedArrayBuffer`` (so onnxruntime-web can run more than one thread)
and a 5 µs ``performance.now()`` instead of 100 µs (Chromium) only when the page is
*cross-origin isolated*: served in a secure context with ``Cross-Origin-Opener-Policy:
same-origin`` and ``Cross-Origin-Embedder-Policy: require-corp``. Under that policy every worker
script the page starts (the timing worker, ONNX Runtime's own thread workers) must carry the
embedder policy too, and every subresource must be same-origin or say it may be embedded. The
phone page loads nothing from another origin, so static files say ``same-origin``.

On plain http from a LAN address the browser ignores these headers (no secure context), which
is why the phone page works either way and reports which one it got.
"""
from __future__ import annotations

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
}
SCRIPT_SUFFIXES = (".js", ".mjs")


def isolate(response):
    """``response`` (a page) with the headers that make it cross-origin isolated."""
    for name, value in ISOLATION_HEADERS.items():
        response[name] = value
    return response


def add_static_headers(headers, path: str, url: str) -> None:
    """WhiteNoise's ``WHITENOISE_ADD_HEADERS_FUNCTION``: static files may be embedded by this
    site only, and scripts carry the embedder policy an isolated page's workers need."""
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    if url.endswith(SCRIPT_SUFFIXES):
        headers["Cross-Origin-Embedder-Policy"] = ISOLATION_HEADERS["Cross-Origin-Embedder-Policy"]
