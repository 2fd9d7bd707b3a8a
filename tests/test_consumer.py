"""The job page's websocket: owners only, history first, then every later event exactly once.

Drives the real ASGI application (origin check, session authentication, routing) with Channels'
WebsocketCommunicator. pytest-asyncio is not installed: each test runs its coroutine with
``async_to_sync``, so the ORM calls wrapped in ``sync_to_async`` run on the test's own thread
(and database connection).
"""
from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client

from adaptation.events import group_name, message_of, publish
from adaptation.models import JobEvent
from tests.leaving_clients import LeavingClient
from webapp.asgi import application


pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")  # a browser sends both; the origin check compares them
TIMEOUT = 3


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test talks to the layer from a new event loop: start from an empty in-memory layer.

    (A Redis layer is left alone: other test runs may share its database.)
    """
    layer = get_channel_layer()
    in_memory = isinstance(layer, InMemoryChannelLayer)
    if in_memory:
        async_to_sync(layer.flush)()
    yield
    if in_memory:
        async_to_sync(layer.flush)()


@pytest.fixture(params=[0.0, 0.05], ids=["group-only", "group-and-poll"])
def poll_seconds(request, settings):
    """Both delivery paths: the channel layer alone (Redis), and the layer plus the table poll."""
    settings.EVENT_POLL_SECONDS = request.param
    return request.param


def session_cookie(user) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return (b"cookie", f"{name}={client.cookies[name].value}".encode())


def communicator(job_id: int, headers: list) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, f"/ws/jobs/{job_id}/", headers=headers)


def store_event_only(job_id: int, seq: int, event_type: str = "job.log", **payload) -> None:
    """What a worker in another process does, as far as the web process can see: a new row."""
    JobEvent.objects.create(job_id=job_id, seq=seq, type=event_type, payload=payload)


async def receive_events(socket: WebsocketCommunicator, count: int) -> list[dict]:
    return [await socket.receive_json_from(timeout=TIMEOUT) for _ in range(count)]


def test_it_sends_the_history_to_the_owner(owner, make_job, poll_seconds):
    job = make_job(owner, status="running", error="")
    publish(job.pk, "job.status", {"status": "running", "error": ""})
    publish(job.pk, "job.log", {"level": "info", "message": "first"})
    publish(job.pk, "job.iteration", {"number": 0, "holdout_accuracy": 0.9})

    headers = [ORIGIN, HOST, session_cookie(owner)]

    async def scenario():
        socket = communicator(job.pk, headers)
        connected, _ = await socket.connect(timeout=TIMEOUT)
        assert connected
        snapshot = await socket.receive_json_from(timeout=TIMEOUT)
        assert snapshot["type"] == "snapshot" and snapshot["last_seq"] == 3
        assert snapshot["job"] == {"id": job.pk, "status": "running", "error": "", "waiting_for": "",
                                   "settings": {}}
        assert [(e["seq"], e["event_type"]) for e in snapshot["events"]] == [
            (1, "job.status"), (2, "job.log"), (3, "job.iteration")]
        assert snapshot["events"][1]["payload"] == {"level": "info", "message": "first"}
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()

    async_to_sync(scenario)()


def test_it_sends_an_empty_history(owner, make_job, poll_seconds):
    job = make_job(owner)

    headers = [ORIGIN, HOST, session_cookie(owner)]

    async def scenario():
        socket = communicator(job.pk, headers)
        assert (await socket.connect(timeout=TIMEOUT))[0]
        snapshot = await socket.receive_json_from(timeout=TIMEOUT)
        assert (snapshot["events"], snapshot["last_seq"]) == ([], 0)
        await socket.disconnect()

    async_to_sync(scenario)()


@pytest.mark.parametrize("who", ["stranger", "anonymous", "no origin", "foreign origin"])
def test_it_refuses_before_accepting(owner, stranger, make_job, who):
    job = make_job(owner)
    headers = {"stranger": [ORIGIN, HOST, session_cookie(stranger)],
               "anonymous": [ORIGIN, HOST],
               "no origin": [HOST, session_cookie(owner)],
               "foreign origin": [(b"origin", b"http://evil.example"), HOST, session_cookie(owner)]}[who]

    async def scenario():
        socket = communicator(job.pk, headers)
        connected, _ = await socket.connect(timeout=TIMEOUT)
        assert connected is False
        await socket.disconnect()

    async_to_sync(scenario)()


def test_it_refuses_a_job_that_does_not_exist(owner):
    headers = [ORIGIN, HOST, session_cookie(owner)]

    async def scenario():
        socket = communicator(999_999, headers)
        assert (await socket.connect(timeout=TIMEOUT))[0] is False
        await socket.disconnect()

    async_to_sync(scenario)()


def test_it_forwards_a_later_event_exactly_once(owner, make_job, poll_seconds):
    job = make_job(owner, status="running")
    publish(job.pk, "job.status", {"status": "running", "error": ""})

    headers = [ORIGIN, HOST, session_cookie(owner)]

    async def scenario():
        socket = communicator(job.pk, headers)
        assert (await socket.connect(timeout=TIMEOUT))[0]
        assert (await socket.receive_json_from(timeout=TIMEOUT))["last_seq"] == 1
        await sync_to_async(publish)(job.pk, "job.iteration", {"number": 0, "holdout_accuracy": 0.9})
        event = await socket.receive_json_from(timeout=TIMEOUT)
        assert (event["type"], event["seq"], event["event_type"], event["job"]) == (
            "event", 2, "job.iteration", job.pk)
        assert event["payload"] == {"number": 0, "holdout_accuracy": 0.9}
        assert await socket.receive_nothing(timeout=0.4)  # not again by the other path
        await socket.disconnect()

    async_to_sync(scenario)()


def test_it_loses_nothing_published_while_connecting(owner, make_job, poll_seconds):
    job = make_job(owner, status="running")
    publish(job.pk, "job.log", {"level": "info", "message": "before"})

    headers = [ORIGIN, HOST, session_cookie(owner)]

    async def scenario():
        socket = communicator(job.pk, headers)
        assert (await socket.connect(timeout=TIMEOUT))[0]
        # Published before the snapshot was read: each lands in the snapshot or after it, once.
        for n in range(3):
            await sync_to_async(publish)(job.pk, "job.log", {"level": "info", "message": f"during {n}"})
        snapshot = await socket.receive_json_from(timeout=TIMEOUT)
        seen = [e["seq"] for e in snapshot["events"]]
        assert snapshot["last_seq"] == seen[-1]
        seen += [e["seq"] for e in await receive_events(socket, 4 - len(seen))]
        assert seen == [1, 2, 3, 4]
        assert await socket.receive_nothing(timeout=0.4)
        await socket.disconnect()

    async_to_sync(scenario)()


def test_it_polls_events_the_layer_cannot_carry(owner, make_job, settings):
    """Embedded mode: the worker's in-memory layer is not the web process's; rows still arrive."""
    settings.EVENT_POLL_SECONDS = 0.05
    job = make_job(owner, status="running")

    headers = [ORIGIN, HOST, session_cookie(owner)]

    async def scenario():
        socket = communicator(job.pk, headers)
        assert (await socket.connect(timeout=TIMEOUT))[0]
        await socket.receive_json_from(timeout=TIMEOUT)
        await sync_to_async(store_event_only)(job.pk, 1, message="from the worker", level="info")
        await sync_to_async(store_event_only)(job.pk, 2, "job.status", status="finished", error="")
        events = await receive_events(socket, 2)
        assert [(e["seq"], e["event_type"]) for e in events] == [(1, "job.log"), (2, "job.status")]
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()

    async_to_sync(scenario)()


def test_it_drops_group_messages_it_has_sent_already(owner, make_job, settings):
    """Late group messages: of an event in the snapshot, and of one the poll sent first."""
    settings.EVENT_POLL_SECONDS = 0.05
    job = make_job(owner, status="running")
    publish(job.pk, "job.log", {"level": "info", "message": "in the snapshot"})
    headers = [ORIGIN, HOST, session_cookie(owner)]

    async def scenario():
        socket = communicator(job.pk, headers)
        assert (await socket.connect(timeout=TIMEOUT))[0]
        assert (await socket.receive_json_from(timeout=TIMEOUT))["last_seq"] == 1
        await sync_to_async(store_event_only)(job.pk, 2, message="polled", level="info")
        assert (await socket.receive_json_from(timeout=TIMEOUT))["seq"] == 2
        events = await sync_to_async(lambda: [message_of(e) for e in JobEvent.objects.filter(job=job)])()
        for message in events:
            await get_channel_layer().group_send(group_name(job.pk), message)
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()

    async_to_sync(scenario)()


def test_it_fills_a_gap_from_the_database(owner, make_job, settings):
    """An event whose group message never came is sent before the next one that does."""
    settings.EVENT_POLL_SECONDS = 0.0
    job = make_job(owner, status="running")

    headers = [ORIGIN, HOST, session_cookie(owner)]

    async def scenario():
        socket = communicator(job.pk, headers)
        assert (await socket.connect(timeout=TIMEOUT))[0]
        await socket.receive_json_from(timeout=TIMEOUT)
        await sync_to_async(store_event_only)(job.pk, 1, message="only stored", level="info")
        assert await socket.receive_nothing(timeout=0.2)  # no poll, no group message
        await sync_to_async(publish)(job.pk, "job.log", {"level": "info", "message": "published"})
        events = await receive_events(socket, 2)
        assert [(e["seq"], e["payload"]["message"]) for e in events] == [(1, "only stored"), (2, "published")]
        assert await socket.receive_nothing(timeout=0.2)
        await socket.disconnect()

    async_to_sync(scenario)()


def pollers() -> list[asyncio.Task]:
    return [task for task in asyncio.all_tasks()
            if not task.done() and getattr(task.get_coro(), "__qualname__", "") == "JobConsumer._poll"]


def test_it_stops_polling_after_disconnect(owner, make_job, settings):
    settings.EVENT_POLL_SECONDS = 0.05
    job = make_job(owner, status="running")

    headers = [ORIGIN, HOST, session_cookie(owner)]

    async def scenario():
        socket = communicator(job.pk, headers)
        assert (await socket.connect(timeout=TIMEOUT))[0]
        await socket.receive_json_from(timeout=TIMEOUT)
        assert len(pollers()) == 1
        await socket.disconnect()
        await asyncio.sleep(0.1)
        assert pollers() == []

    async_to_sync(scenario)()


def test_a_page_that_goes_while_an_event_is_sent_leaves_its_group(owner, make_job, settings):
    """The browser tab closes as an event goes out: the server's send fails (an OSError, as the
    ASGI spec asks), and the consumer must still reach its disconnect and leave the job's group."""
    settings.EVENT_POLL_SECONDS = 0.0  # the group path alone
    job = make_job(owner, status="running")
    server = LeavingClient(application)
    layer = get_channel_layer()
    headers = [ORIGIN, HOST, session_cookie(owner)]

    async def scenario():
        socket = WebsocketCommunicator(server, f"/ws/jobs/{job.pk}/", headers=headers)
        assert (await socket.connect(timeout=TIMEOUT))[0]
        assert (await socket.receive_json_from(timeout=TIMEOUT))["last_seq"] == 0
        server.leave()
        await sync_to_async(publish)(job.pk, "job.log", {"level": "info", "message": "late"})
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while not server.dropped and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # until the consumer has tried to send the event
        await socket.send_input({"type": "websocket.disconnect", "code": 1001})
        await socket.wait(timeout=TIMEOUT)  # raises the consumer's exception, if it died of one

    async_to_sync(scenario)()
    assert [json.loads(m["text"])["seq"] for m in server.dropped] == [1]
    if isinstance(layer, InMemoryChannelLayer):
        assert not layer.groups.get(group_name(job.pk))
