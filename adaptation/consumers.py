"""Live events of one job for its page: the history from the database first, then what follows.

``JobConsumer`` checks in ``connect`` that the user owns the job (a foreign or unknown job is
closed before accept, which the browser sees as a refused handshake: HTTP 403), joins the group
``job.<id>``, and only then reads the snapshot, so an event committed in between is either in
the snapshot or arrives afterwards, and the sequence number drops the copy. Events reach it two
ways: the channel layer (``job_event``) and, when ``settings.EVENT_POLL_SECONDS`` > 0, a poll of
the ``JobEvent`` table (the in-memory layer of the embedded mode cannot hear the worker). Both
go through ``_forward``, which sends each sequence number once and in order: a gap in the
numbers is filled from the database before the newer event is sent.
"""
from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from adaptation.events import group_name, message_of
from adaptation.models import Job, JobEvent
from webapp.lib.sockets import TolerantSends

logger = logging.getLogger(__name__)

#: Most events one database read sends (a poll or a gap fill); the next read continues.
EVENTS_PER_READ = 500
#: Close code for a client that sends anything (1003: "unsupported data").
RECEIVE_REFUSED = 1003


class JobConsumer(TolerantSends, AsyncJsonWebsocketConsumer):
    """``ws/jobs/<job_id>/``: a snapshot message, then one ``event`` message per new JobEvent."""

    async def connect(self) -> None:
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        self.group = None
        self.last_seq = 0
        self.poller: asyncio.Task | None = None
        self.send_lock = asyncio.Lock()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not await self._owns_job(user.pk):
            await self.close()
            return
        self.group = group_name(self.job_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        async with self.send_lock:
            snapshot = await self._snapshot()
            if snapshot is None:  # deleted since the ownership check
                await self.close()
                return
            self.last_seq = snapshot["last_seq"]
            await self.send_json(snapshot)
        if settings.EVENT_POLL_SECONDS > 0:
            self.poller = asyncio.create_task(self._poll(settings.EVENT_POLL_SECONDS))

    async def disconnect(self, code) -> None:
        if self.poller is not None:
            self.poller.cancel()
            try:
                await self.poller
            except asyncio.CancelledError:
                pass
            self.poller = None
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            self.group = None

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        """The page sends nothing: a client that does is not the page, and the connection closes
        with 1003 ("unsupported data") and the reason, without reading what was sent."""
        await self.close(code=RECEIVE_REFUSED, reason="this socket only sends job events: it reads no messages")

    async def job_event(self, message: dict) -> None:
        """A ``job.event`` group message (adaptation.events.EventMessage)."""
        async with self.send_lock:
            seq = message["seq"]
            if seq <= self.last_seq:
                return  # already in the snapshot, or sent by the poll
            if seq > self.last_seq + 1:
                await self._send_from_database(up_to=seq - 1)
            if seq > self.last_seq:
                await self._send_event(message)

    # ----------------------------------------------------------------------- internals

    async def _send_event(self, message: dict) -> None:
        self.last_seq = message["seq"]
        await self.send_json({**message, "type": "event"})

    async def _send_from_database(self, up_to: int | None = None) -> None:
        """Send stored events newer than the last one sent (call with ``send_lock`` held)."""
        for message in await self._events_after(self.last_seq, up_to):
            if message["seq"] > self.last_seq:
                await self._send_event(message)

    async def _poll(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                async with self.send_lock:
                    await self._send_from_database()
            except asyncio.CancelledError:
                raise
            except Exception:  # a locked database or a dropped connection: try again next time
                logger.warning("polling events of job %s failed", self.job_id, exc_info=True)

    @database_sync_to_async
    def _owns_job(self, user_id: int) -> bool:
        return Job.objects.filter(pk=self.job_id, owner_id=user_id).exists()

    @database_sync_to_async
    def _snapshot(self) -> dict | None:
        job = Job.objects.only("pk", "status", "error", "waiting_for", "settings").filter(pk=self.job_id).first()
        if job is None:
            return None
        events = [message_of(event) for event in JobEvent.objects.filter(job_id=self.job_id).order_by("seq")]
        return {"type": "snapshot",
                "job": {"id": job.pk, "status": job.status, "error": job.error, "waiting_for": job.waiting_for, "settings": job.settings},
                "events": events, "last_seq": events[-1]["seq"] if events else 0}

    @database_sync_to_async
    def _events_after(self, seq: int, up_to: int | None) -> list[dict]:
        events = JobEvent.objects.filter(job_id=self.job_id, seq__gt=seq)
        if up_to is not None:
            events = events.filter(seq__lte=up_to)
        return [message_of(event) for event in events.order_by("seq")[:EVENTS_PER_READ]]
