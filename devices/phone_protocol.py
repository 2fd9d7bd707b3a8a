"""What a phone's browser adds to the agent protocol (devices.agent.protocol, docs/agent.md).

A browser page (static/js/phone/agent-session.mjs) speaks the agent's protocol with three
differences, checked here so the consumer stays one conversation:

- Its runtime is ``onnxruntime-web``; ``hello`` also declares the ``backend`` it times with
  (``wasm``) and its ``threads`` (one WebAssembly thread unless the page is cross-origin
  isolated). Both are part of the phone's look-up-table key (devices.lut).
- A browser cannot set headers on a websocket, so its device token comes in ``hello.token``.
- Its timings are batches of calls divided by their count (a browser's clock is coarse), so each
  layer's stats may carry how they were taken: ``timer_resolution_ms``, ``calls_per_batch`` and
  ``overhead_ms`` (the per-call cost of an empty model of the layer's input shape). They are
  checked; ``overhead_ms`` is stored with the entry (devices.lut: whether it drowns in that cost),
  the others are set aside. The statistics themselves are checked as any agent's.

Hidden tabs: a browser throttles a hidden tab's timers (Chromium to one wake-up a minute after
five minutes hidden), so its heartbeats may come a minute or more apart. The server never closes
a connection for missing heartbeats (a closed socket ends it), so such gaps cost nothing but a
stale "last seen" (the sweep shows a device offline after 8 heartbeats of silence, two minutes by
default, until its next heartbeat: devices.presence); the page pauses timing while hidden and
re-times what overlapped it.
Standard library only, like the agent's protocol.
"""
from __future__ import annotations

import math
from typing import Any

from devices.agent.protocol import ProtocolError, check_stats, integer

RUNTIME = "onnxruntime-web"
#: Execution backends a phone may declare (WebGPU is experimental and untested).
BACKENDS = ("wasm", "webgpu")
#: Most threads a browser may declare (onnxruntime-web caps its WebAssembly pool far lower).
MAX_THREADS = 64
#: Longest device token accepted in ``hello`` (secrets.token_urlsafe(32) is 43 characters).
MAX_TOKEN_CHARS = 128
#: Optional timing metadata a browser's layer stats may carry: name -> (lowest, highest).
TIMING_FIELDS = {"timer_resolution_ms": (0.0, 1000.0), "overhead_ms": (0.0, 60_000.0)}
MAX_CALLS_PER_BATCH = 1 << 20


def check_hello(message: dict) -> tuple[str, int]:
    """A browser's ``hello``: its (backend, threads); ProtocolError when either is missing or odd."""
    facts = message.get("facts") if isinstance(message.get("facts"), dict) else {}
    backend = message.get("backend", facts.get("backend"))
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ProtocolError(f"a browser's hello must declare its backend, one of {list(BACKENDS)}, got {backend!r}")
    threads = message.get("threads", facts.get("threads"))
    return backend, integer(threads, "threads", 1, MAX_THREADS)


def hello_token(message: dict) -> str | None:
    """The device token a ``hello`` carries (browsers), or None."""
    token = message.get("token")
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS or not token.isprintable() \
            or " " in token:
        return None
    return token


def check_timed_stats(value: Any, what: str = "stats") -> tuple[dict, float | None]:
    """Layer stats with the browser's optional timing metadata: (the clean stats, as check_stats
    returns them, and the entry's ``overhead_ms`` or None) once the metadata is checked;
    ProtocolError otherwise."""
    if not isinstance(value, dict):
        return check_stats(value, what), None
    rest = dict(value)
    checked = {}
    for name, (low, high) in TIMING_FIELDS.items():
        if name in rest:
            number = rest.pop(name)
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                    or not low <= number <= high:
                raise ProtocolError(f"{what}.{name} must be a number in [{low:g}, {high:g}], got {number!r}")
            checked[name] = float(number)
    if "calls_per_batch" in rest:
        integer(rest.pop("calls_per_batch"), f"{what}.calls_per_batch", 1, MAX_CALLS_PER_BATCH)
    return check_stats(rest, what), checked.get("overhead_ms")
