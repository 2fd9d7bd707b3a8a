"""Shared web helpers: API conventions, uploads, accounts, rate limits, origins, people-readable
numbers, form helpers, worker claims and websocket consumers that outlive a gone client.

Both apps import these; they import neither app (``tests/test_layers.py`` checks it). The rest of
``webapp`` is wiring (settings, urls, asgi, celery, serve), which only ``webapp`` itself imports.
"""
