"""The agent's side of the conversation: pairing over HTTP, then one websocket session after another.

``Agent.run_forever`` connects to ``ws(s)://<server>/ws/agent/`` with the device token, says
hello, sends heartbeats from a background thread, and serves the requests the server sends, one
at a time: download the request's ONNX files (a zip over HTTP, same token), time the layers in
batches and send each batch's statistics as soon as it is timed (a killed agent loses at most
one batch: the server stores each batch, and the files of a re-sent request hold only what is
still missing), then time the whole networks together and send their statistics (with the raw
per-run times of each, thinned to ``p.MAX_SAMPLES``, when the request asks for ``samples``).

When the connection drops (network, server restart) it reconnects with exponential backoff,
capped; the server hands a reconnecting agent its unfinished request again. A refused token
(revoked, or the device paired again elsewhere) ends the program: retrying cannot help.
"""
from __future__ import annotations

import json
import logging
import random
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import IO, Any, Callable
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import connect

from devices.agent import AGENT_VERSION
from devices.agent import protocol as p
from devices.agent.timing import TimedSamples, TimingProtocol, load_runner, time_with_retries_and_samples

logger = logging.getLogger("netadapt.agent")

DEFAULT_BATCH = 16           # layers timed together (interleaved) and sent in one message
ANSWER_TIMEOUT_S = 300.0     # for the server to store a batch (a busy database may make it wait)
HTTP_TIMEOUT_S = 300.0       # the server builds a request's ONNX files while we wait
MAX_DOWNLOAD_BYTES = 4 << 30
INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0


REDACTED = "[redacted]"
#: An ``Authorization`` header as websockets logs it at debug level (``> Authorization: Token x``).
_AUTHORIZATION = re.compile(r"(authorization:\s*)\S+(?:[ \t]+\S+)?", re.IGNORECASE)


class RedactSecrets(logging.Filter):
    """Replaces the device token, the pairing code and any ``Authorization`` header value in a log
    record with ``[redacted]``: ``-v`` logs websockets' handshake headers, and logs get shared.

    Attach it to handlers (records of every logger pass them) and to the websocket's logger;
    ``add`` a secret as soon as it is known.
    """

    def __init__(self, *secrets: str | None) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4:  # a shorter "secret" would blank out ordinary words
            self.secrets.add(secret)

    def redact(self, text: str) -> str:
        text = _AUTHORIZATION.sub(lambda match: match.group(1) + REDACTED, text)
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


#: The one filter of this process: every secret it learns is redacted everywhere it is attached.
_REDACT = RedactSecrets()


def protect_logs(*secrets: str | None, loggers: tuple[str, ...] = ("websockets.client",)) -> RedactSecrets:
    """Redact ``secrets`` from every record the root logger's handlers write and from the records
    of ``loggers`` (wherever they are handled); returns the filter (``add`` more secrets to it)."""
    for target in [*logging.getLogger().handlers, *(logging.getLogger(name) for name in loggers)]:
        if _REDACT not in target.filters:
            target.addFilter(_REDACT)
    for secret in secrets:
        _REDACT.add(secret)
    return _REDACT


class AgentError(Exception):
    """Something the agent cannot go on with; the message says what to do."""


class PairingFailed(AgentError):
    """The server did not accept the pairing code."""


class Refused(AgentError):
    """The server refused the device token: the agent must be paired again."""


class ConnectionLost(Exception):
    """The session cannot go on (no answer, a dropped download); the agent reconnects."""


class RequestAbandoned(Exception):
    """The server said to stop working on the current request."""


class MeasurementFailed(Exception):
    """A request's files could not be read or timed here; the request fails with this message."""


# --------------------------------------------------------------------------- HTTP


def normalise_server(url: str) -> str:
    """``http(s)://host[:port][/prefix]`` without a trailing slash; ValueError otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the server must be an http:// or https:// URL, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"the server URL takes no query or fragment: {url!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def websocket_url(server: str) -> str:
    parts = urlsplit(server)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path + p.WEBSOCKET_PATH, "", ""))


def origin_of(server: str) -> str:
    """The Origin the server expects of a websocket (its own scheme and host)."""
    parts = urlsplit(server)
    return f"{parts.scheme}://{parts.netloc}"


def _user_agent() -> str:
    return f"netadapt-agent/{AGENT_VERSION}"


def _error_detail(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read().decode("utf-8", errors="replace"))
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            return body["detail"]
    except (ValueError, OSError):
        pass
    return f"HTTP {error.code} {error.reason}"


def pair(server: str, code: str, facts: dict, timeout: float = 60.0) -> dict:
    """Redeem a pairing code: ``{"device", "token", "name", "runtime", "threads"}``.

    PairingFailed when the server refuses the code (its message says why); OSError when the
    server cannot be reached.
    """
    body = json.dumps({"code": code, "facts": facts}).encode()
    request = urllib.request.Request(server + p.PAIR_PATH, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json", "User-Agent": _user_agent()})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise PairingFailed(f"the server refused the pairing code: {_error_detail(error)}") from None
    except ValueError:
        raise PairingFailed("the server's answer to pairing is not JSON: is this NetAdapt Studio?") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("token"), str) \
            or not isinstance(answer.get("device"), int):
        raise PairingFailed(f"unexpected answer to pairing: {answer!r}")
    return answer


def download(server: str, path: str, token: str, out: IO[bytes], max_bytes: int = MAX_DOWNLOAD_BYTES) -> None:
    """Write the file at ``path`` on the server (token-authenticated) into ``out``.

    Refused on 401; MeasurementFailed on another 4xx (the request is gone or not ours);
    ConnectionLost when the server cannot be reached or fails (5xx): worth another try later.
    """
    if not path.startswith("/") or path.startswith("//"):
        raise MeasurementFailed(f"the server sent a files path that is not a path: {path!r}")
    request = urllib.request.Request(server + path, headers={
        "Authorization": p.authorization(token), "User-Agent": _user_agent()})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            copied = 0
            while chunk := response.read(1 << 20):
                copied += len(chunk)
                if copied > max_bytes:
                    raise MeasurementFailed(f"the request's files are larger than {max_bytes} bytes")
                out.write(chunk)
    except urllib.error.HTTPError as error:
        if error.code == 401:
            raise Refused(f"the server refused this agent's token ({_error_detail(error)})") from None
        if 400 <= error.code < 500:
            raise MeasurementFailed(f"downloading the request's files: {_error_detail(error)}") from None
        raise ConnectionLost(f"downloading the request's files: {_error_detail(error)}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionLost(f"downloading the request's files: {error}") from None
    out.flush()


# --------------------------------------------------------------------------- request files


@dataclass(frozen=True)
class ModelFile:
    """One ONNX file of a request: a layer (its index in the request) or a whole network."""

    index: int
    file: str
    input_shape: tuple[int, ...]
    label: str = ""


def _model_file(entry: Any, names: set[str], what: str) -> ModelFile:
    if not isinstance(entry, dict):
        raise MeasurementFailed(f"manifest: {what} must be an object")
    try:
        index = p.integer(entry.get("index"), f"{what}.index", 0)
        shape = entry.get("input_shape")
        if not isinstance(shape, list) or not 1 <= len(shape) <= 8:
            raise p.ProtocolError(f"{what}.input_shape must be a list of 1 to 8 sizes")
        shape = tuple(p.integer(size, f"{what}.input_shape", 1, 1 << 20) for size in shape)
    except p.ProtocolError as error:
        raise MeasurementFailed(f"manifest: {error}") from None
    file = entry.get("file")
    if file not in names:
        raise MeasurementFailed(f"manifest: {what} names {file!r}, which the zip does not hold")
    return ModelFile(index, file, shape, str(entry.get("label", "")))


def read_manifest(archive: zipfile.ZipFile, request_id: int) -> tuple[list[ModelFile], list[ModelFile]]:
    """The layers and networks of a request's zip, checked against its file list."""
    try:
        manifest = json.loads(archive.read("manifest.json"))
    except (KeyError, ValueError) as error:
        raise MeasurementFailed(f"the request's zip has no readable manifest.json: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("request") != request_id:
        raise MeasurementFailed(f"the manifest is not the one of request {request_id}")
    names = set(archive.namelist())
    layers = [_model_file(e, names, f"layers[{i}]") for i, e in enumerate(manifest.get("layers") or [])]
    networks = [_model_file(e, names, f"networks[{i}]") for i, e in enumerate(manifest.get("networks") or [])]
    if [n.index for n in networks] != list(range(len(networks))):
        raise MeasurementFailed("manifest: the networks must be numbered 0, 1, ... in order")
    return layers, networks


def time_files(archive: zipfile.ZipFile, entries: list[ModelFile], protocol: TimingProtocol) -> list[TimedSamples]:
    """The statistics of each file, timed together (interleaved), with the samples they summarise."""
    runners = []
    for entry in entries:
        try:
            runners.append(load_runner(archive.read(entry.file), entry.input_shape, protocol.threads))
        except Exception as error:  # ONNX Runtime's exceptions share no base class worth naming
            raise MeasurementFailed(f"ONNX Runtime cannot run {entry.file}: {type(error).__name__}: "
                                    f"{error}") from None
    try:
        return time_with_retries_and_samples(runners, protocol)
    except Exception as error:
        raise MeasurementFailed(f"timing failed: {type(error).__name__}: {error}") from None


# --------------------------------------------------------------------------- websocket


class Channel:
    """One websocket connection: thread-safe sends, JSON messages in, waits with deadlines."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.lock = threading.Lock()

    def send(self, message_type: str, **fields: Any) -> None:
        text = p.encode(message_type, **fields)
        with self.lock:
            self.socket.send(text)

    def receive(self, timeout: float) -> dict | None:
        """The next message, or None after ``timeout`` seconds (or for a message we cannot read)."""
        try:
            text = self.socket.recv(timeout=timeout)
        except TimeoutError:
            return None
        try:
            return p.decode(text)
        except p.ProtocolError as error:
            logger.warning("ignoring a message from the server: %s", error)
            return None

    def expect(self, types: tuple[str, ...], request_id: int | None = None,
               timeout: float = ANSWER_TIMEOUT_S) -> dict:
        """The next message of one of ``types`` (about ``request_id``, when given).

        RequestAbandoned when the server answers with an error about that request; an error
        about nothing in particular while waiting for a welcome ends the session (AgentError).
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectionLost(f"no {'/'.join(types)} from the server in {timeout:.0f} s")
            message = self.receive(min(remaining, 1.0))
            if message is None:
                continue
            kind = message["type"]
            if kind == p.ERROR:
                text = str(message.get("message", ""))[:p.MAX_ERROR_CHARS]
                if request_id is not None and message.get("request") == request_id:
                    raise RequestAbandoned(text)
                if p.WELCOME in types:
                    raise AgentError(f"the server did not accept our hello: {text}")
                logger.warning("the server says: %s", text)
                continue
            if kind in types and (request_id is None or message.get("request") == request_id):
                return message
            logger.debug("ignoring a %r message while waiting for %s", kind, "/".join(types))


class Agent:
    """Serves one device's measurement requests until stopped (or refused)."""

    def __init__(self, server: str, token: str, *, facts: dict, batch: int = DEFAULT_BATCH,
                 initial_backoff: float = INITIAL_BACKOFF_S, max_backoff: float = MAX_BACKOFF_S,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.server = normalise_server(server)
        self.token = token
        protect_logs(token)  # websockets logs the handshake's Authorization header at debug level
        self.facts = facts
        self.batch = batch
        self.initial_backoff = initial_backoff
        self.max_backoff = max(max_backoff, initial_backoff)
        self.sleep = sleep
        self.welcomed = False  # whether the server welcomed the current (or last) connection

    # ------------------------------------------------------------------- connections

    def run_forever(self) -> None:
        """Connect, serve, reconnect with capped exponential backoff; Refused ends it."""
        delay = self.initial_backoff
        while True:
            self.welcomed = False
            try:
                self.run_session()
            except InvalidStatus as error:
                status = error.response.status_code
                if status in (401, 403):
                    raise Refused(f"the server refused this agent's token (HTTP {status} on "
                                  f"{websocket_url(self.server)}): the device was revoked or paired "
                                  "again. Pair it again with --pair CODE (a new code is on the "
                                  "device's page). If it was paired just now, check that --server is "
                                  "the address the server knows itself by (its ALLOWED_HOSTS).") from None
                logger.warning("the server refused the websocket: HTTP %s", status)
            except (AgentError, ConnectionLost, OSError, TimeoutError, WebSocketException) as error:
                if isinstance(error, Refused):
                    raise
                logger.warning("connection to %s: %s: %s", self.server, type(error).__name__, error)
            except Exception:  # a bug of ours must not end a program left running on a device
                logger.exception("unexpected error; starting over")
            if self.welcomed:  # it worked a while: the next try comes soon
                delay = self.initial_backoff
            wait = delay * random.uniform(0.8, 1.2)
            logger.info("reconnecting in %.1f s", wait)
            self.sleep(wait)
            delay = min(delay * 2, self.max_backoff)

    def run_session(self) -> None:
        """One connection, until it closes (always with an exception: closed, lost, refused)."""
        headers = {"Authorization": p.authorization(self.token)}
        with connect(websocket_url(self.server), origin=origin_of(self.server), additional_headers=headers,
                     user_agent_header=_user_agent(), open_timeout=60, close_timeout=5,
                     max_size=p.MAX_MESSAGE_CHARS * 4) as socket:
            channel = Channel(socket)
            version = self.facts.get("onnxruntime", "")
            try:
                channel.send(p.HELLO, protocol=p.PROTOCOL_VERSION, agent=AGENT_VERSION, runtime="onnxruntime",
                             runtime_version=version, facts=self.facts)
                welcome = channel.expect((p.WELCOME,), timeout=60)
                self.welcomed = True
                logger.info("connected to %s as device %r (id %s): ONNX Runtime %s, %s thread(s)",
                            self.server, welcome.get("name"), welcome.get("device"), version,
                            welcome.get("threads"))
                seconds = welcome.get("heartbeat_seconds")
                if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                    seconds = p.HEARTBEAT_SECONDS
                stop = threading.Event()
                threading.Thread(target=self._heartbeats, args=(channel, float(seconds), stop),
                                 name="heartbeats", daemon=True).start()
                try:
                    self._serve(channel)
                finally:
                    stop.set()
            except ConnectionClosed as closed:
                if closed.rcvd is not None and closed.rcvd.code == p.CLOSE_REVOKED:
                    raise Refused("the server revoked this device's token: pair it again with "
                                  "--pair CODE (a new code is on the device's page)") from None
                raise

    @staticmethod
    def _heartbeats(channel: Channel, seconds: float, stop: threading.Event) -> None:
        while not stop.wait(seconds):
            try:
                channel.send(p.HEARTBEAT)
            except Exception:  # the connection is gone; the main thread notices and reconnects
                return

    def _serve(self, channel: Channel) -> None:
        while True:
            message = channel.receive(timeout=1.0)
            if message is None:
                continue
            kind = message["type"]
            if kind == p.REQUEST:
                self.serve_request(channel, message)
            elif kind == p.ERROR:
                logger.warning("the server says: %s", str(message.get("message", ""))[:p.MAX_ERROR_CHARS])
            else:
                logger.debug("ignoring a %r message", kind)

    # ------------------------------------------------------------------- one request

    def serve_request(self, channel: Channel, message: dict) -> None:
        """Measure one request; its failures fail the request, connection trouble propagates."""
        try:
            request_id = p.integer(message.get("request"), "request", 1)
        except p.ProtocolError as error:
            logger.warning("ignoring a request message: %s", error)
            return
        started = time.monotonic()
        try:
            try:
                protocol = TimingProtocol.from_message(message.get("threads"), message.get("protocol"))
            except p.ProtocolError as error:
                raise MeasurementFailed(f"the agent cannot read the request: {error}") from None
            files = message.get("files")
            if not isinstance(files, str):
                raise MeasurementFailed("the request names no files to download")
            logger.info("request %d: %s of %s layer(s) to time, %d network(s); %d thread(s), %d timed runs each",
                        request_id, message.get("pending"), message.get("signatures"),
                        len(message.get("networks") or []), protocol.threads, protocol.runs)
            with tempfile.TemporaryFile(prefix="netadapt-agent-") as spool:
                download(self.server, files, self.token, spool)
                spool.seek(0)
                try:
                    archive = zipfile.ZipFile(spool)
                except zipfile.BadZipFile as error:
                    raise MeasurementFailed(f"the request's files are not a zip: {error}") from None
                with archive:
                    self._measure(channel, request_id, archive, protocol, samples=message.get("samples") is True)
        except RequestAbandoned as error:
            logger.warning("request %d: the server stopped it: %s", request_id, error)
        except MeasurementFailed as error:
            logger.error("request %d failed: %s", request_id, error)
            channel.send(p.ERROR, request=request_id, message=str(error)[:p.MAX_ERROR_CHARS])
            try:
                channel.expect((p.DONE,), request_id, timeout=60)  # the request has ended
            except RequestAbandoned:
                pass  # it had ended already
        else:
            logger.info("request %d done in %.1f s", request_id, time.monotonic() - started)

    def _measure(self, channel: Channel, request_id: int, archive: zipfile.ZipFile,
                 protocol: TimingProtocol, samples: bool = False) -> None:
        """Time and send the layers batch by batch, then the networks (with their per-run times
        when ``samples``), and wait for the request to end."""
        layers, networks = read_manifest(archive, request_id)
        for start in range(0, len(layers), self.batch):
            batch = layers[start:start + self.batch]
            timed = time_files(archive, batch, protocol)
            channel.send(p.LAYERS, request=request_id,
                         results={str(entry.index): t.stats.to_dict() for entry, t in zip(batch, timed)})
            answer = channel.expect((p.STORED,), request_id)
            logger.info("request %d: %d/%d layer(s) timed, %s stored in all", request_id,
                        start + len(batch), len(layers), answer.get("signatures_done"))
        timed = time_files(archive, networks, protocol)
        results = []
        for entry, t in zip(networks, timed):
            logger.info("request %d: network %r: median %.3f ms, min %.3f ms", request_id, entry.label,
                        t.stats.median_ms, t.stats.min_ms)
            result = t.stats.to_dict()
            if samples:
                result[p.SAMPLES_FIELD] = p.kept_samples(t.samples_ms)
            results.append(result)
        channel.send(p.NETWORKS, request=request_id, results=results)
        channel.expect((p.DONE,), request_id)

