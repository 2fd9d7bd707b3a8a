"""What the agent and the server agree on: paths, message types, and the checks of a message.

Both sides import this module (the server's ``devices.consumers`` and ``devices.agent_views``,
and the agent), so a message type or a limit is spelled once. Standard library only.

Every websocket message is one JSON object with a ``type``. The conversation (docs/agent.md has
the fields of each message):

    agent  -> server   hello {protocol, agent, runtime, runtime_version, facts}
    server -> agent    welcome {device, name, runtime, threads, heartbeat_seconds}
    agent  -> server   heartbeat {}                          (every heartbeat_seconds)
    server -> agent    request {request, files, threads, protocol, signatures, pending, samples, ...}
    agent  -> server   layers {request, results: {index: stats}}      (one batch at a time)
    server -> agent    stored {request, stored, signatures_done}
    agent  -> server   networks {request, results: [stats (+ samples_ms), ...]}  (ends the request)
    server -> agent    done {request}
    agent  -> server   error {request, message}              (fails the request)
    server -> agent    error {message, request?}             (a message it could not use)

A ``request`` with ``samples: true`` (a user's own measurement, not a job's) asks for the raw
per-run times of each whole network too: each network's result then carries ``samples_ms``, the
times (ms) of the attempt its statistics summarise, at most MAX_SAMPLES of them (evenly thinned,
``kept_samples``). An agent that sends no samples still completes the request; a server that
sends no ``samples`` field gets none.

The server sends an agent one request at a time, and the next one only after ``done`` or a
failure. An ``error`` naming the request the agent is working on means: stop working on it.
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

from devices.agent.safe_json import JSONInputError
from devices.agent.safe_json import loads as safe_loads

PROTOCOL_VERSION = 1

WEBSOCKET_PATH = "/ws/agent/"
PAIR_PATH = "/api/v1/agent/pair"
FILES_PATH = "/api/v1/agent/requests/{request}/files"
AUTH_SCHEME = "Token"

# Agent -> server.
HELLO = "hello"
HEARTBEAT = "heartbeat"
LAYERS = "layers"
NETWORKS = "networks"
# Server -> agent.
WELCOME = "welcome"
REQUEST = "request"
STORED = "stored"
DONE = "done"
# Both ways.
ERROR = "error"

#: The server closes an accepted connection with this code when the device's token was revoked
#: (a refused handshake, before accept, reaches the agent as HTTP 403).
CLOSE_REVOKED = 4001
#: The server closes a connection with this code (1007, "invalid frame payload data") when a frame
#: is not a protocol message at all: binary, too long, not JSON, too deeply nested, not an object
#: with a string "type". The close reason says which; the agent reconnects.
CLOSE_MALFORMED = 1007
#: Longest close reason a websocket close frame can carry, in UTF-8 bytes.
MAX_CLOSE_REASON_BYTES = 123

HEARTBEAT_SECONDS = 15.0
#: Longest JSON text of one message either side accepts (a batch of layer results is far less).
MAX_MESSAGE_CHARS = 1_000_000
#: Largest ``facts`` object (as JSON) a device may report.
MAX_FACTS_CHARS = 8_000
#: Longest runtime version string (the look-up table's column holds 32 characters).
MAX_VERSION_CHARS = 32
MAX_ERROR_CHARS = 2_000

#: Raw per-run times one network's result may carry (the server's own worker keeps as many:
#: devices.tasks.MAX_SAMPLES; a test checks that they agree).
MAX_SAMPLES = 1000
SAMPLES_FIELD = "samples_ms"

STATS_FIELDS = ("n", "min_ms", "p10_ms", "median_ms", "p90_ms", "mean_ms", "std_ms")
#: The timing protocol's fields as the server sends them (devices.measure.protocol.MeasureProtocol).
PROTOCOL_FIELDS = ("warmup", "rounds", "runs_per_round", "max_spread", "max_retries")


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the text says what is wrong."""


def encode(message_type: str, **fields: Any) -> str:
    return json.dumps({"type": message_type, **fields}, separators=(",", ":"), allow_nan=False)


def decode(text: str | bytes | None) -> dict:
    """The message as a dict with a string ``type``, or ProtocolError."""
    if not isinstance(text, str):
        raise ProtocolError("messages are JSON text frames")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ProtocolError(f"message longer than {MAX_MESSAGE_CHARS} characters")
    try:
        message = safe_loads(text)
    except JSONInputError as error:
        raise ProtocolError(f"malformed JSON: {error}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('a message is a JSON object with a string "type"')
    return message


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame carries (MAX_CLOSE_REASON_BYTES of UTF-8)."""
    data = text.encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return text
    return data[:MAX_CLOSE_REASON_BYTES - 3].decode("utf-8", errors="ignore") + "..."


def integer(value: Any, what: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (a JSON number without a fraction, or a string of digits); else ProtocolError."""
    if isinstance(value, bool):
        raise ProtocolError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ProtocolError(f"{what} must be an integer, got {value!r}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise ProtocolError(f"{what} must be in [{minimum}, {maximum}], got {value}")
    return value


def check_stats(value: Any, what: str = "stats") -> dict:
    """A timing summary (``TimingStats.to_dict()``) checked field by field; a clean copy.

    Exactly the fields of STATS_FIELDS; n >= 1; finite, non-negative milliseconds in the order
    min <= p10 <= median <= p90 (a rounding slack allowed) and min <= mean.
    """
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be an object with {', '.join(STATS_FIELDS)}")
    missing = [name for name in STATS_FIELDS if name not in value]
    unknown = sorted(set(value) - set(STATS_FIELDS))
    if missing or unknown:
        raise ProtocolError(f"{what}: missing fields {missing}, unknown fields {unknown}")
    stats: dict[str, Any] = {"n": integer(value["n"], f"{what}.n", minimum=1)}
    for name in STATS_FIELDS[1:]:
        number = value[name]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                or number < 0:
            raise ProtocolError(f"{what}.{name} must be a finite number >= 0, got {number!r}")
        stats[name] = float(number)
    slack = 1e-9 * max(1.0, stats["p90_ms"])
    order = [stats["min_ms"], stats["p10_ms"], stats["median_ms"], stats["p90_ms"]]
    if any(a > b + slack for a, b in zip(order, order[1:])) or stats["min_ms"] > stats["mean_ms"] + slack:
        raise ProtocolError(f"{what}: min <= p10 <= median <= p90 and min <= mean must hold, got {order} "
                            f"and mean {stats['mean_ms']}")
    return stats


def kept_samples(samples_ms: Sequence[float], limit: int = MAX_SAMPLES) -> list[float]:
    """At most ``limit`` of the samples, spread evenly over the run (every k-th when there are more),
    rounded to the nanosecond the clock gives: what the server's worker keeps
    (devices.tasks.kept_samples, which imports torch; a test checks that both keep the same)."""
    if len(samples_ms) > limit:
        samples_ms = [samples_ms[i * len(samples_ms) // limit] for i in range(limit)]
    return [round(value, 6) for value in samples_ms]


def check_samples(value: Any, runs: int, what: str = "samples_ms") -> list[float]:
    """Raw per-run times (ms) of a result of ``runs`` timed runs, checked; a clean copy.

    A list of 1 to min(runs, MAX_SAMPLES) finite numbers > 0.
    """
    limit = min(runs, MAX_SAMPLES)
    if not isinstance(value, list) or not 1 <= len(value) <= limit:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise ProtocolError(f"{what} must be a list of 1 to {limit} run times (at most {MAX_SAMPLES}, "
                            f"and no more than the {runs} timed runs), got {got}")
    for i, number in enumerate(value):
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                or not number > 0:
            raise ProtocolError(f"{what}[{i}] must be a finite number > 0, got {number!r}")
    return [float(number) for number in value]


def check_network_result(value: Any, what: str = "result", samples: bool = False) -> dict:
    """A whole network's result: its stats, plus its ``samples_ms`` when ``samples`` were asked
    for (optional even then: an older agent sends none); a clean copy. Samples that were not
    asked for are refused."""
    if isinstance(value, dict) and SAMPLES_FIELD in value:
        if not samples:
            raise ProtocolError(f"{what}.{SAMPLES_FIELD}: per-run times were not asked for in this request")
        result = check_stats({k: v for k, v in value.items() if k != SAMPLES_FIELD}, what)
        result[SAMPLES_FIELD] = check_samples(value[SAMPLES_FIELD], result["n"], f"{what}.{SAMPLES_FIELD}")
        return result
    return check_stats(value, what)


def authorization(token: str) -> str:
    """The value of the ``Authorization`` header that carries a device token."""
    return f"{AUTH_SCHEME} {token}"


def token_of(header: str | bytes | None) -> str | None:
    """The token of an ``Authorization: Token <token>`` header value, or None."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != AUTH_SCHEME.lower() or not token or " " in token:
        return None
    return token
