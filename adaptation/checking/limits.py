"""Run one function in a child process with a memory ceiling and a time limit that hold for torch.

``run_limited(func, args, memory_bytes=..., seconds=...)`` starts a fresh interpreter (never a fork:
the caller may be a threaded web or Celery process), which caps its own private writable memory
with ``RLIMIT_DATA`` before it imports ``func``'s module, runs ``func(*args)`` and sends back its
JSON result. The parent kills the child's whole process group at the deadline. The child's peak
resident memory is its ``VmHWM`` (/proc/<pid>/status), which the child reports with its answer
and the parent reads before a kill: ``ru_maxrss`` would not do, as Linux carries the parent's own
peak across the fork and exec into the child's.

Why RLIMIT_DATA (docs/untrusted-files.md has the figures): since Linux 4.7 it counts private
writable mappings (heap, anonymous mmaps, thread stacks), which is where decoded images and
tensors live, but not the ~3 GB of shared-library mappings torch's CUDA build makes at import,
which break ``RLIMIT_AS``. An allocation past the ceiling fails at once in the child (MemoryError,
or torch's "can't allocate memory"), so the ceiling holds exactly, where a watchdog polling RSS
would only notice after the fact. No cgroup is needed (none can be made without privileges).

Arguments and results cross as JSON, never pickle: the child handles untrusted bytes, and the
parent must not execute whatever a subverted child sends back. Linux only (>= 5.3: pidfd).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

#: Largest result a child may send back (a summary, not data).
MAX_RESULT_BYTES = 1 << 20
#: The project folder, put on the child's import path so that ``func``'s module is found.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Thread pools sized 1: each thread stack counts against RLIMIT_DATA (8 MB apiece), and a check
#: does not need a core per thread. CUDA is hidden: the driver maps huge areas, a check needs no GPU.
CHILD_ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                     "CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1"}


class LimitExceeded(Exception):
    """The child needed more memory than its ceiling or more time than its limit."""

    def __init__(self, kind: Literal["memory", "time"], detail: str, peak_rss_bytes: int | None) -> None:
        super().__init__(f"{kind} limit exceeded: {detail}")
        self.kind = kind
        self.detail = detail
        self.peak_rss_bytes = peak_rss_bytes


class ChildFailed(Exception):
    """The function raised in the child (``error_type``: its class's qualified name), or the child
    died without an answer (``error_type`` "crash")."""

    def __init__(self, error_type: str, message: str, peak_rss_bytes: int | None) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.peak_rss_bytes = peak_rss_bytes


@dataclass(frozen=True)
class LimitedRun:
    """What ``func`` returned and the child's peak resident memory (its ``VmHWM``)."""

    value: Any
    peak_rss_bytes: int


def _function_path(func: Callable[..., Any]) -> str:
    module, name = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
    if not module or module == "__main__" or "<" in name or "." in name:
        raise ValueError(f"{func!r} is not a module-level function of an importable module")
    return f"{module}:{name}"


def run_limited(func: Callable[..., Any], args: tuple | list = (), *, memory_bytes: int,
                seconds: float) -> LimitedRun:
    """``func(*args)`` in a child process with at most ``memory_bytes`` of private writable memory
    and ``seconds`` of wall-clock time.

    ``func`` is a module-level function; ``args`` and its result are JSON values. Raises
    ``LimitExceeded`` (kind "memory" or "time") or ``ChildFailed``; either way the child is gone.
    Their ``peak_rss_bytes`` is None only when a child crashed before it could say.
    """
    if memory_bytes < 1 or seconds <= 0:
        raise ValueError("memory_bytes and seconds must be positive")
    payload = json.dumps({"function": _function_path(func), "args": list(args),
                          "memory_bytes": int(memory_bytes)}).encode() + b"\n"
    environment = dict(os.environ, **CHILD_ENVIRONMENT)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PROJECT_ROOT), environment.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-m", "adaptation.checking.child"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment,
                             close_fds=True, start_new_session=True)
    deadline = time.monotonic() + seconds
    try:
        try:
            child.stdin.write(payload)  # stays open: the child exits when it closes (we died)
            child.stdin.flush()
        except BrokenPipeError:
            pass  # it died at once; its exit status says how
        output, timed_out = _collect(child, deadline)
    finally:
        peak = peak_rss_bytes(child.pid)  # still alive (or a zombie: None) until reaped
        _kill_group(child.pid)  # before reaping, while its group id cannot belong to anyone else
        status = _reap(child)
        with contextlib.suppress(BrokenPipeError):  # an unsent payload cannot be flushed
            child.stdin.close()
        child.stdout.close()
    if timed_out:
        raise LimitExceeded("time", f"still running after {seconds:g} s", peak)
    return _answer(output, status, peak)


def _collect(child: subprocess.Popen, deadline: float) -> tuple[bytes, bool]:
    """The child's output until it closes it and exits, or (output, True) at the deadline."""
    pidfd = os.pidfd_open(child.pid)
    stdout = child.stdout.fileno()
    chunks: list[bytes] = []
    size, open_fds = 0, {stdout, pidfd}
    try:
        while open_fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"", True
            ready, _, _ = select.select(list(open_fds), [], [], remaining)
            if stdout in ready:
                chunk = os.read(stdout, 1 << 16)
                if not chunk:
                    open_fds.discard(stdout)
                size += len(chunk)
                if size <= MAX_RESULT_BYTES:
                    chunks.append(chunk)
            if pidfd in ready:
                open_fds.discard(pidfd)  # exited; its output may still be in the pipe
                if stdout in open_fds:
                    # a grandchild may hold the pipe open: read what is there, then stop
                    while time.monotonic() < deadline and (chunk := _read_now(stdout)):
                        size += len(chunk)
                        if size <= MAX_RESULT_BYTES:
                            chunks.append(chunk)
                    open_fds.discard(stdout)
    finally:
        os.close(pidfd)
    return (b"".join(chunks) if size <= MAX_RESULT_BYTES else b""), False


def _read_now(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], 0)
    return os.read(fd, 1 << 16) if ready else b""


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the child leads its own session: its helpers die with it
    except ProcessLookupError:
        pass


def _reap(child: subprocess.Popen) -> int:
    """Wait for the child (its raw wait status); tell Popen it is gone."""
    _, status = os.waitpid(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return status


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """``VmHWM`` of a live process: the most resident memory its program has had since exec."""
    return _status_field(pid, "VmHWM:")


def _status_field(pid: int | str, name: str) -> int | None:
    """A size field (kB) of /proc/<pid>/status in bytes; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _answer(output: bytes, status: int, peak: int | None) -> LimitedRun:
    try:
        answer = json.loads(output.decode()) if output else None
    except (UnicodeDecodeError, ValueError):
        answer = None
    if not isinstance(answer, dict):
        if os.WIFSIGNALED(status):
            how = f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
        else:
            how = f"exited with status {os.WEXITSTATUS(status)}"
        raise ChildFailed("crash", f"the checking process {how} without an answer", peak)
    if isinstance(answer.get("peak_rss_bytes"), int):
        peak = answer["peak_rss_bytes"]  # the child's own, read just before it answered
    if answer.get("limit") == "memory":
        raise LimitExceeded("memory", str(answer.get("detail", "")), peak)
    if "error" in answer:
        raise ChildFailed(str(answer["error"]), str(answer.get("message", "")), peak)
    return LimitedRun(answer.get("value"), peak or 0)


# --------------------------------------------------------------------------- the child's side


def limit_memory(memory_bytes: int) -> None:
    """Cap this process's private writable memory (RLIMIT_DATA), soft and hard."""
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))


#: A failure with less than this left under the ceiling is counted as the ceiling's doing.
NEAR_CEILING_BYTES = 64 << 20


def is_out_of_memory(error: BaseException, memory_bytes: int | None = None) -> bool:
    """Whether ``error`` is the memory ceiling's doing: a MemoryError or torch's CPU allocator
    failing (a RuntimeError with errno 12's text), itself or anywhere in its cause chain, or any
    failure while the process's private writable memory is within ``NEAR_CEILING_BYTES`` of
    ``memory_bytes``. The last case is real: an allocation refused inside an extension module's
    import (torch's) can surface as a SystemError or ImportError with no MemoryError attached."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or (
                isinstance(current, RuntimeError) and "can't allocate memory" in str(current)):
            return True
        current = current.__cause__ or current.__context__
    used = private_writable_bytes()
    return memory_bytes is not None and used is not None and used >= memory_bytes - NEAR_CEILING_BYTES


def private_writable_bytes(pid: int | str = "self") -> int | None:
    """``VmData`` of a live process: what ``RLIMIT_DATA`` counts (private writable mappings)."""
    return _status_field(pid, "VmData:")


def resolve(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
