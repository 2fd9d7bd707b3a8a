"""Websocket consumers that outlive a client who left mid-message.

The ASGI spec has the server raise a subclass of ``OSError`` when an application sends on a
connection the client has closed (uvicorn's ``ClientDisconnected``). Raised out of a handler, it
ends the consumer before the ``websocket.disconnect`` the server has already queued is
dispatched, so ``disconnect()`` never runs: an agent killed while the server answered its
results stayed "busy" for good, and a job page's dead channel stayed in its group. A consumer
with :class:`TolerantSends` drops such a frame instead, and its ``disconnect()`` runs next.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class TolerantSends:
    """Mixin (before the Channels consumer class): a frame for a gone client is dropped.

    It wraps the ASGI ``send`` itself, so every path (``send``, ``send_json``, ``close``) is covered.
    """

    async def __call__(self, scope, receive, send):
        async def send_unless_gone(message: dict) -> None:
            try:
                await send(message)
            except OSError as error:  # the client has gone; its disconnect message comes next
                logger.info("%s: a %r for a client that has gone was dropped (%r)", type(self).__name__,
                            message.get("type"), error)

        return await super().__call__(scope, receive, send_unless_gone)
