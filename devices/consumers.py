"""The agent program's websocket, ``ws/agent/``: device status, and its measurement requests.

``AgentConsumer`` accepts a connection with a valid device token (``Authorization: Token
<token>``); an unknown or revoked one is closed before accept (HTTP 403 to the agent). A browser
cannot set that header: a connection without it is accepted, and its first message must be a
``hello`` carrying the token (within ``TOKEN_WAIT_SECONDS``), else it is closed with code 4001
(devices.phone_protocol; phones also declare their backend and threads, which key their
look-up table). After the agent's ``hello`` (its facts and ONNX Runtime version, stored on the device; status
online) it polls the database every ``poll_seconds()`` -- requests are rows, and in the embedded
mode nothing could push them here from another process -- and hands the agent one request at a
time: its own unfinished ``running`` request first (an agent that reconnects after a crash gets
it back), then the oldest ``queued`` one, claimed with ``claim_request(id, "agent:<device id>")``
(status busy). Layer results are stored batch by batch (``store_layer_results``), the networks'
results end the request (``complete_request``), an agent's error fails it (``fail_request``). A
request no job made (a user's own measurement) asks for ``samples``: each network's result may
then carry its raw per-run times, ``samples_ms``, stored with the statistics as the local
device's worker stores its own (devices.tasks.run_request); the measurement page draws them.
Each poll also re-checks the token: a revoked agent is disconnected with code 4001.

Every message is validated (devices.agent.protocol): a frame that is not a message at all
(binary, not JSON, nested too deeply, not an object with a string ``type``) closes the
connection with ``CLOSE_MALFORMED`` and the reason; a message that cannot be used is answered
with an ``error`` message and changes nothing -- except invalid results for the request the agent is
working on, which fail that request (the job shows why) instead of leaving it to hang. A message
about a request that is not the one this connection was given (another device's, an unknown
id) is refused and stores nothing. Status goes offline when the connection ends, unless another
connection of the same device has been heard from since -- also when the agent went while the
server was answering it (webapp.lib.sockets). All database access goes through
``database_sync_to_async``.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from devices import phone_protocol as web
from devices.agent import protocol as p
from devices.measure.protocol import MeasureProtocol
from devices.models import Device, MeasurementRequest
from devices.pairing import device_for_token
from devices.requests import (claim_request, complete_request, fail_request, files_missing,
                              pending_signatures, store_layer_results)
from webapp.lib.sockets import TolerantSends

logger = logging.getLogger(__name__)

#: Layer results one ``layers`` message may carry.
MAX_LAYERS_PER_MESSAGE = 10_000
#: Requests looked at per poll (a request another measurer took meanwhile is skipped).
CANDIDATES_PER_POLL = 10
#: How long a connection without a token header may stay open before its hello brings one.
TOKEN_WAIT_SECONDS = 30.0


def poll_seconds() -> float:
    """How often a connection polls for requests and re-checks its token.

    ``AGENT_POLL_SECONDS`` when set (``NETADAPT_AGENT_POLL_SECONDS``; 0 means not set), else
    ``EVENT_POLL_SECONDS`` (0.1 s embedded), else 1 s: the production mode's channel layer carries
    job events, but nothing announces new requests.
    """
    return float(settings.AGENT_POLL_SECONDS or settings.EVENT_POLL_SECONDS or 1.0)


def heartbeat_seconds() -> float:
    return float(settings.AGENT_HEARTBEAT_SECONDS)


def worker_name(device_id: int) -> str:
    """The ``claimed_by`` of a device's agent: the same across reconnections."""
    return f"agent:{device_id}"


class InvalidResults(p.ProtocolError):
    """Results for the current request that cannot be stored: the request fails."""


class AgentConsumer(TolerantSends, AsyncWebsocketConsumer):
    """``ws/agent/``: one connected agent program (see the module docstring)."""

    async def connect(self) -> None:
        self.device_id: int | None = None
        self.token_hash = ""
        self.device_name = ""
        self.poller: asyncio.Task | None = None
        self.lock = asyncio.Lock()
        self.said_hello = False
        self.runtime_version = ""
        self.current: int | None = None  # the request this connection's agent is working on
        self.samples = False  # whether that request asked for the networks' per-run times
        self.touched = None  # the last_seen this connection wrote
        self.kind = "agent"
        self.backend, self.threads = "", 0  # a phone's, declared in its hello
        self.awaiting_token = False  # accepted without a header: the token must come in hello
        headers = dict(self.scope.get("headers") or [])
        if b"authorization" not in headers:
            self.awaiting_token = True
            await self.accept()
            self.poller = asyncio.create_task(self._close_unless_token(TOKEN_WAIT_SECONDS))
            return
        if not await self._authenticate(p.token_of(headers.get(b"authorization"))):
            await self.close()
            return
        await self.accept()
        self._start_polling()

    async def _authenticate(self, token: str | None) -> bool:
        found = await self._device_of(token)
        if found is None:
            return False
        self.device_id, self.token_hash, self.device_name, self.kind = found
        return True

    def _start_polling(self) -> None:
        self.poller = asyncio.create_task(self._poll(poll_seconds()))

    async def _close_unless_token(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self.awaiting_token:
            self.awaiting_token = False
            await self._send_error(f"no hello with a device token within {seconds:g} s")
            await self.close(code=p.CLOSE_REVOKED)

    async def _authenticate_hello(self, text_data, bytes_data) -> None:
        """The first message of a connection without a header: a hello with a valid token."""
        self.awaiting_token = False
        if self.poller is not None:  # the wait for this message
            self.poller.cancel()
            self.poller = None
        try:
            message = p.decode(text_data if bytes_data is None else bytes_data)
        except p.ProtocolError:
            message = {}
        token = web.hello_token(message) if message.get("type") == p.HELLO else None
        if token is None or not await self._authenticate(token):
            await self._send_error("send the device token in the first message (hello.token); a revoked "
                                   "or replaced token must be paired again")
            await self.close(code=p.CLOSE_REVOKED)
            return
        self._start_polling()
        await self.receive(text_data=text_data, bytes_data=bytes_data)

    async def disconnect(self, code) -> None:
        if self.poller is not None:
            self.poller.cancel()
            try:
                await self.poller
            except asyncio.CancelledError:
                pass
            self.poller = None
        if self.device_id is not None and self.touched is not None:
            try:
                await self._went_offline()
            except Exception:
                logger.warning("marking device %s offline failed", self.device_id, exc_info=True)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.awaiting_token:
            await self._authenticate_hello(text_data, bytes_data)
            return
        if self.device_id is None:
            return
        try:
            message = p.decode(text_data if bytes_data is None else bytes_data)
        except p.ProtocolError as error:  # not a message at all: no conversation after that
            logger.warning("agent of device %s sent a malformed frame, closing: %s", self.device_id, error)
            await self.close(code=p.CLOSE_MALFORMED, reason=p.close_reason(str(error)))
            return
        kind = message["type"]
        handler = {p.HELLO: self._hello, p.HEARTBEAT: self._heartbeat, p.LAYERS: self._layers,
                   p.NETWORKS: self._networks, p.ERROR: self._agent_error}.get(kind)
        if handler is None:
            await self._send_error(f"unknown message type {kind!r}")
            return
        if kind != p.HELLO and not self.said_hello:
            await self._send_error(f"say hello before {kind!r}")
            return
        async with self.lock:
            try:
                await handler(message)
            except p.ProtocolError as error:
                await self._send_error(str(error), self._request_of(message))
            except Exception:  # a database error, a bug: answer, keep the connection
                logger.exception("agent of device %s: handling a %r message failed", self.device_id, kind)
                request = self._request_of(message)
                if request is not None and request == self.current:
                    self.current = None  # the next poll hands it over again, with what is missing
                await self._send_error(f"the server could not handle this {kind!r} message; "
                                       "it will send the request again", request)

    # ----------------------------------------------------------------------- messages

    async def _hello(self, message: dict) -> None:
        version = message.get("protocol")
        if version != p.PROTOCOL_VERSION:
            raise p.ProtocolError(f"protocol version {version!r} is not spoken here (this server speaks "
                                  f"{p.PROTOCOL_VERSION}): download the agent again from the server")
        facts = message.get("facts", {})
        if self.kind == "phone":
            if message.get("runtime") != web.RUNTIME:
                raise p.ProtocolError(f"phones measure in the browser: runtime must be {web.RUNTIME!r}")
            backend, threads = web.check_hello(message)
        elif message.get("runtime") != "onnxruntime":
            raise p.ProtocolError("agents measure with ONNX Runtime: runtime must be 'onnxruntime'")
        runtime_version = message.get("runtime_version")
        if not isinstance(runtime_version, str) or not 0 < len(runtime_version) <= p.MAX_VERSION_CHARS:
            raise p.ProtocolError(f"runtime_version must be a version string of at most "
                                  f"{p.MAX_VERSION_CHARS} characters")
        if not isinstance(facts, dict) or len(json.dumps(facts)) > p.MAX_FACTS_CHARS:
            raise p.ProtocolError(f"facts must be an object of at most {p.MAX_FACTS_CHARS} characters as JSON")
        if self.kind == "phone":
            self.backend, self.threads = backend, threads
            facts = {**facts, "onnxruntime_web": runtime_version, "backend": backend, "threads": threads}
        else:
            facts = {**facts, "onnxruntime": runtime_version}
        device = await self._said_hello(facts)
        if device is None:
            await self._close_revoked()
            return
        self.said_hello, self.runtime_version = True, runtime_version
        await self._send(p.WELCOME, device=device.pk, name=device.name, runtime=device.runtime,
                         threads=device.threads, heartbeat_seconds=heartbeat_seconds())
        if self.current is None:
            await self._offer()

    async def _heartbeat(self, message: dict) -> None:
        if not await self._touch(Device.Status.BUSY if self.current is not None else Device.Status.ONLINE):
            await self._close_revoked()

    async def _layers(self, message: dict) -> None:
        request_id = self._current_request(message)
        results = message.get("results")
        try:
            if not isinstance(results, dict) or not 0 < len(results) <= MAX_LAYERS_PER_MESSAGE:
                raise InvalidResults(f"results must map layer indices to stats (1 to "
                                     f"{MAX_LAYERS_PER_MESSAGE} of them)")
            checked, overheads = {}, {}
            for key, stats in results.items():
                index = p.integer(key, "layer index", 0)
                if self.kind == "phone":
                    checked[index], overhead = web.check_timed_stats(stats, f"results[{key}]")
                    if overhead is not None:
                        overheads[index] = overhead
                else:
                    checked[index] = p.check_stats(stats, f"results[{key}]")
        except p.ProtocolError as error:
            await self._fail_current(request_id, f"the agent sent invalid layer results: {error}")
            return
        try:
            done = await self._store_layers(request_id, checked, overheads)
        except InvalidResults as error:
            await self._fail_current(request_id, f"the agent sent invalid layer results: {error}")
            return
        if done is None:
            await self._request_closed(request_id)
            return
        await self._send(p.STORED, request=request_id, stored=len(checked), signatures_done=done)

    async def _networks(self, message: dict) -> None:
        request_id = self._current_request(message)
        results = message.get("results")
        try:
            if not isinstance(results, list):
                raise InvalidResults("results must be a list of stats, one per network")
            checked = [p.check_network_result(result, f"results[{i}]", samples=self.samples)
                       for i, result in enumerate(results)]
        except p.ProtocolError as error:
            await self._fail_current(request_id, f"the agent sent invalid network results: {error}")
            return
        try:
            completed = await self._complete(request_id, checked)
        except InvalidResults as error:
            await self._fail_current(request_id, f"the agent's results do not complete the request: {error}")
            return
        if not completed:
            await self._request_closed(request_id)
            return
        self.current = None
        await self._send(p.DONE, request=request_id, status=MeasurementRequest.Status.DONE)
        await self._offer()

    async def _agent_error(self, message: dict) -> None:
        request_id = self._current_request(message)
        text = message.get("message")
        text = text[:p.MAX_ERROR_CHARS] if isinstance(text, str) and text.strip() else "no reason given"
        await self._fail(request_id, f"measuring on {self.device_name} failed: {text}")
        self.current = None
        await self._send(p.DONE, request=request_id, status=MeasurementRequest.Status.FAILED)
        await self._offer()

    # ----------------------------------------------------------------------- helpers

    @staticmethod
    def _request_of(message: dict) -> int | None:
        request = message.get("request")
        return request if isinstance(request, int) and not isinstance(request, bool) else None

    def _current_request(self, message: dict) -> int:
        """The message's request id when it is the one this connection handed out; else ProtocolError."""
        request_id = p.integer(message.get("request"), "request", 1)
        if request_id != self.current:
            raise p.ProtocolError(f"request {request_id} is not the request this agent was given "
                                  f"({self.current if self.current is not None else 'none'}): ignored")
        return request_id

    async def _fail_current(self, request_id: int, reason: str) -> None:
        await self._fail(request_id, reason)
        self.current = None
        await self._send_error(f"{reason}; the request has failed", request_id)
        await self._offer()

    async def _request_closed(self, request_id: int) -> None:
        self.current = None
        await self._send_error(f"request {request_id} is no longer open (done, failed or cancelled): "
                               "stop working on it", request_id)
        await self._touch(Device.Status.ONLINE)
        await self._offer()

    async def _send(self, message_type: str, **fields: Any) -> None:
        await self.send(text_data=p.encode(message_type, **fields))

    async def _send_error(self, text: str, request: int | None = None) -> None:
        fields = {"request": request} if request is not None else {}
        await self._send(p.ERROR, message=text[:p.MAX_ERROR_CHARS], **fields)

    async def _close_revoked(self) -> None:
        await self._send_error("this device's token was revoked: pair the agent again")
        await self.close(code=p.CLOSE_REVOKED)

    async def _offer(self) -> None:
        """Hand the agent its next request, if there is one (call with the lock held)."""
        offer = await self._claim_next()
        if offer is not None:
            self.current, self.samples = offer["request"], offer["samples"]
            await self._send(p.REQUEST, **offer)

    async def _poll(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                if not await self._token_valid():
                    async with self.lock:
                        await self._close_revoked()
                    return
                if self.said_hello and self.current is None:
                    async with self.lock:
                        if self.current is None:
                            await self._offer()
            except asyncio.CancelledError:
                raise
            except Exception:  # a locked database, a dropped connection: try again next time
                logger.warning("polling for device %s failed", self.device_id, exc_info=True)

    # ----------------------------------------------------------------------- database

    @database_sync_to_async
    def _device_of(self, token: str | None) -> tuple[int, str, str, str] | None:
        device = device_for_token(token)
        return None if device is None else (device.pk, device.token_hash, device.name, device.kind)

    def _devices(self):
        """This connection's device, as long as its token is the one it connected with."""
        return Device.objects.filter(pk=self.device_id, kind=self.kind, token_hash=self.token_hash).exclude(
            token_hash="")

    @database_sync_to_async
    def _token_valid(self) -> bool:
        return self._devices().exists()

    def _touch_now(self, **fields) -> bool:
        now = timezone.now()
        if self._devices().update(last_seen=now, **fields):
            self.touched = now
            return True
        return False

    @database_sync_to_async
    def _touch(self, status: str) -> bool:
        return self._touch_now(status=status)

    @database_sync_to_async
    def _said_hello(self, facts: dict) -> Device | None:
        status = Device.Status.BUSY if self.current is not None else Device.Status.ONLINE
        # A phone's browser decides its threads (cross-origin isolation): its jobs ask for those.
        more = {"threads": self.threads} if self.kind == "phone" else {}
        if not self._touch_now(status=status, facts=facts, **more):
            return None
        return Device.objects.get(pk=self.device_id)

    @database_sync_to_async
    def _went_offline(self) -> None:
        # Only if no other connection of the device has written last_seen since this one did.
        Device.objects.filter(pk=self.device_id, last_seen=self.touched).update(status=Device.Status.OFFLINE)

    def _open_request(self, request_id: int) -> MeasurementRequest | None:
        return MeasurementRequest.objects.select_related("device").filter(
            pk=request_id, device_id=self.device_id, status=MeasurementRequest.Status.RUNNING,
            claimed_by=worker_name(self.device_id)).first()

    @database_sync_to_async
    def _claim_next(self) -> dict | None:
        worker = worker_name(self.device_id)
        mine = MeasurementRequest.objects.filter(device_id=self.device_id)
        candidates = list(mine.filter(status=MeasurementRequest.Status.RUNNING, claimed_by=worker).order_by("created", "pk")
                          .values_list("pk", flat=True)[:CANDIDATES_PER_POLL])
        candidates += list(mine.filter(status=MeasurementRequest.Status.QUEUED).order_by("created", "pk")
                           .values_list("pk", flat=True)[:CANDIDATES_PER_POLL])
        for request_id in candidates:
            request = claim_request(request_id, worker)
            if request is None:
                continue
            if self.kind == "phone" and (request.runtime, request.threads) != (web.RUNTIME, self.threads):
                fail_request(request, f"{self.device_name} is a phone's browser, which measures with "
                                      f"{web.RUNTIME} on {self.threads} thread(s); this request asked for "
                                      f"{request.runtime!r} on {request.threads}")
                continue
            if self.kind != "phone" and request.runtime != "onnxruntime":
                fail_request(request, f"{self.device_name} runs the agent program, which measures with "
                                      f"ONNX Runtime only; this request asked for {request.runtime!r}")
                continue
            why = files_missing(request)
            if why:  # stored before requests carried their files: no device can measure it
                fail_request(request, why)
                continue
            pending = pending_signatures(request, self.runtime_version)
            protocol = MeasureProtocol(threads=request.threads, **settings.MEASURE_PROTOCOL)
            self._touch_now(status=Device.Status.BUSY)
            return {"request": request.pk, "files": p.FILES_PATH.format(request=request.pk),
                    "reason": request.reason, "runtime": request.runtime, "threads": request.threads,
                    "signatures": len(request.signatures), "pending": len(pending),
                    "networks": [str(d.get("label", "")) for d in request.networks],
                    "example_shape": request.example_shape,
                    # A user's own measurement: its page draws a histogram of the runs.
                    "samples": request.job_id is None,
                    "protocol": {name: getattr(protocol, name) for name in p.PROTOCOL_FIELDS}}
        return None

    @database_sync_to_async
    def _store_layers(self, request_id: int, results: dict[int, dict], overheads: dict[int, float]) -> int | None:
        """Store a batch; the request's signatures_done, or None when it is no longer open."""
        request = self._open_request(request_id)
        if request is None:
            return None
        out_of_range = sorted(i for i in results if not 0 <= i < len(request.signatures))
        if out_of_range:
            raise InvalidResults(f"layer indices {out_of_range[:10]} are not in request {request_id} "
                                 f"({len(request.signatures)} layers)")
        store_layer_results(request, results, self.runtime_version, overheads)
        self._touch_now(status=Device.Status.BUSY)
        return MeasurementRequest.objects.values_list("signatures_done", flat=True).get(pk=request_id)

    @database_sync_to_async
    def _complete(self, request_id: int, results: list[dict]) -> bool:
        """End the request with its networks' results; False when it is no longer open."""
        with transaction.atomic():  # the request ends and the device is free together
            request = self._open_request(request_id)
            if request is None:
                return False
            try:
                complete_request(request, results, self.runtime_version)
            except ValueError as error:  # a result count that does not match, layers still missing
                raise InvalidResults(str(error)) from None
            self._touch_now(status=Device.Status.ONLINE)
        return True

    @database_sync_to_async
    def _fail(self, request_id: int, reason: str) -> None:
        with transaction.atomic():
            request = self._open_request(request_id)
            if request is not None:
                fail_request(request, reason)
            self._touch_now(status=Device.Status.ONLINE)
