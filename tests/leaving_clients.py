"""An ASGI application as a server shows it to a client that has left mid-conversation.

After ``leave()``, every ``websocket.send`` or ``websocket.close`` the application makes raises
:class:`ClientGone`, an ``OSError`` as the ASGI spec asks of servers (uvicorn raises its
``ClientDisconnected``); the test then delivers the ``websocket.disconnect`` the server would
have queued.
"""
from __future__ import annotations


class ClientGone(OSError):
    """What the server raises for a frame sent to a client that has gone."""


class LeavingClient:
    def __init__(self, application) -> None:
        self.application = application
        self.left = False
        self.dropped: list[dict] = []

    def leave(self) -> None:
        self.left = True

    async def __call__(self, scope, receive, send):
        async def send_unless_gone(message: dict) -> None:
            if self.left and message["type"] in ("websocket.send", "websocket.close"):
                self.dropped.append(message)
                raise ClientGone("the client disconnected")
            await send(message)

        return await self.application(scope, receive, send_unless_gone)
