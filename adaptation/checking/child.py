"""The child process of ``run_limited`` (``python -m adaptation.checking.child``).

Reads one JSON line from stdin (function, arguments, memory ceiling), caps its memory before
importing the function's module, runs it and writes one JSON answer on the stdout it was given:
``{"value": ...}``, ``{"limit": "memory", "detail": ...}`` or ``{"error": type, "message": ...}``.
Anything else the function prints goes to stderr. The child exits as soon as its stdin closes
(the parent died), so a check never outlives the worker that asked for it.
"""
from __future__ import annotations

import json
import os
import sys
import threading

from adaptation.checking.limits import is_out_of_memory, limit_memory, peak_rss_bytes, resolve

#: Freed before an out-of-memory answer is written, so that writing it cannot fail too.
RESERVE_BYTES = 1 << 20


def _exit_when_orphaned() -> None:
    sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe or died
    os._exit(70)


def main() -> None:
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # the function's prints must not corrupt the answer
    request = json.loads(sys.stdin.buffer.readline())
    memory_bytes = int(request["memory_bytes"])
    limit_memory(memory_bytes)
    threading.Thread(target=_exit_when_orphaned, daemon=True).start()
    reserve = bytearray(RESERVE_BYTES)
    try:
        answer = {"value": resolve(request["function"])(*request["args"])}
    except BaseException as error:  # noqa: BLE001 - everything is reported to the parent
        del reserve
        if is_out_of_memory(error, memory_bytes):
            answer = {"limit": "memory", "detail": f"{type(error).__name__}: {error}"[:500]}
        else:
            kind = type(error)
            answer = {"error": f"{kind.__module__}.{kind.__qualname__}", "message": str(error)[:4000]}
    answer["peak_rss_bytes"] = peak_rss_bytes()
    with os.fdopen(answer_fd, "wb") as out:
        out.write(json.dumps(answer).encode())
    os._exit(0)  # no interpreter teardown: nothing left to do, and the daemon thread is blocked


if __name__ == "__main__":
    main()
