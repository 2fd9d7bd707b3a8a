"""The host lock: a local latency measurement takes this machine's CPU for itself.

Fine-tunes and measurements of the server's CPU share the same cores; a measurement timed while a
fine-tune runs is slower than the network is. Every CPU-heavy process of the host holds the lock
*shared* while it computes, and lets go of it between step chunks; a measurement holds it
*exclusive*. Two files in one folder (``HOST_LOCK_DIR``) carry it, with ``fcntl.flock`` (the kernel
releases a dead process's locks, and any process of the host that sees the folder takes part):

- a measurer first locks ``intent`` exclusively (from then on no trainer starts a new chunk), then
  ``host`` exclusively (it waits only for the chunks already running: at most one chunk), times,
  and releases both;
- a trainer holds ``host`` shared while it computes a chunk; at each checkpoint it releases it,
  passes through a shared lock of ``intent`` (it blocks while a measurement is pending or under
  way), and takes ``host`` shared again.

So a measurement never waits for more than one chunk however many trainers there are, and a
trainer waits at most for the measurements pending when it reached its checkpoint. Each trainer
also holds a lock on its own file under ``trainers/`` while it runs: a measurement counts them to
say how many fine-tunes paused for it.

Pure Python (no Django, no torch): the folder is an argument.
"""
from __future__ import annotations

import fcntl
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

#: Longest gap between two tries of a lock wanted within a bounded wait (seconds).
POLL_MAX_S = 0.05


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def _try(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _lock_within(fd: int, mode: int, wait_s: float | None) -> bool:
    """Lock ``fd`` (``LOCK_SH``/``LOCK_EX``), blocking at most ``wait_s`` seconds (None: no bound).

    ``flock`` has no timeout: a bounded wait tries without blocking, with growing pauses between
    tries (1 ms up to ``POLL_MAX_S``)."""
    if wait_s is None:
        fcntl.flock(fd, mode)
        return True
    deadline = time.monotonic() + wait_s
    pause = 0.001
    while not _try(fd, mode):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, POLL_MAX_S)
    return True


@dataclass
class Hold:
    """What taking the host cost a measurement: whether it got it, how long it waited, and how
    many trainers were running when it asked (they paused at their next checkpoint)."""

    acquired: bool
    waited_s: float
    trainers: int


class HostLock:
    """The host lock in ``folder`` (created when missing)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        (self.folder / "trainers").mkdir(parents=True, exist_ok=True)
        self.intent_path = self.folder / "intent"
        self.host_path = self.folder / "host"

    # ------------------------------------------------------------------ the measurer's side

    def measuring(self, wait_s: float | None = None,
                  on_intent: Callable[[], None] | None = None) -> "Measuring":
        """A context manager that holds the host exclusively (``with lock.measuring(60) as hold``);
        ``hold.acquired`` is False when running chunks did not end within ``wait_s`` seconds
        (the measurement then runs with new chunks held back, but not alone). ``on_intent`` is
        called once the intent is taken (no new chunk starts from then on), before the wait."""
        return Measuring(self, wait_s, on_intent)

    def running_trainers(self) -> int:
        """How many trainers are registered and alive; removes the files of dead ones."""
        count = 0
        for path in (self.folder / "trainers").glob("*.lock"):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                if _try(fd, fcntl.LOCK_EX):  # nobody holds it: its trainer is gone
                    path.unlink(missing_ok=True)
                else:
                    count += 1
            finally:
                os.close(fd)
        return count

    # ------------------------------------------------------------------ the trainer's side

    def trainer(self) -> "Trainer":
        """A trainer's handle: ``checkpoint()`` between chunks, ``leave()`` (or ``with``) at the end."""
        return Trainer(self)


class Measuring:
    """The exclusive hold of a measurement; see ``HostLock.measuring``."""

    def __init__(self, lock: HostLock, wait_s: float | None,
                 on_intent: Callable[[], None] | None = None) -> None:
        self.lock = lock
        self.wait_s = wait_s
        self.on_intent = on_intent
        self.hold: Hold | None = None
        self._fds: list[int] = []

    def __enter__(self) -> Hold:
        started = time.monotonic()
        intent = _open(self.lock.intent_path)
        self._fds.append(intent)
        fcntl.flock(intent, fcntl.LOCK_EX)  # measurers take turns; each holds it for one measurement
        trainers = self.lock.running_trainers()
        if self.on_intent is not None:
            self.on_intent()
        host = _open(self.lock.host_path)
        self._fds.append(host)
        left = None if self.wait_s is None else max(0.0, self.wait_s - (time.monotonic() - started))
        acquired = _lock_within(host, fcntl.LOCK_EX, left)
        self.hold = Hold(acquired, time.monotonic() - started, trainers)
        return self.hold

    def __exit__(self, *exc) -> None:
        for fd in reversed(self._fds):  # host first, then intent: trainers wake to a free host
            os.close(fd)  # closing the description releases its flock
        self._fds.clear()


class Trainer:
    """A CPU-heavy process's part in the host lock: it holds ``host`` shared between checkpoints.

    ``pauses`` counts the checkpoints at which a measurement was pending (the trainer waited for
    it), ``paused_s`` the time spent waiting there.
    """

    def __init__(self, lock: HostLock) -> None:
        self.lock = lock
        self.pauses = 0
        self.paused_s = 0.0
        self._host: int | None = None
        self._mark: int | None = None

    def checkpoint(self) -> float:
        """Between two chunks: let a pending measurement run, then hold the host again.
        Returns the seconds waited (0.0 when no measurement was pending)."""
        if self._mark is None:
            path = self.lock.folder / "trainers" / f"{os.getpid()}-{uuid.uuid4().hex}.lock"
            self._mark = _open(path)
            fcntl.flock(self._mark, fcntl.LOCK_EX)
            self._mark_path = path
        if self._host is not None:
            fcntl.flock(self._host, fcntl.LOCK_UN)
        else:
            self._host = _open(self.lock.host_path)
        waited = 0.0
        intent = _open(self.lock.intent_path)
        try:
            if not _try(intent, fcntl.LOCK_SH):
                started = time.monotonic()
                fcntl.flock(intent, fcntl.LOCK_SH)  # blocks while a measurement is pending
                waited = time.monotonic() - started
                self.pauses += 1
                self.paused_s += waited
            fcntl.flock(self._host, fcntl.LOCK_SH)  # taken while no measurement can start
        finally:
            os.close(intent)
        return waited

    def leave(self) -> None:
        """The work is done (or stopped): hold nothing, unregister."""
        if self._host is not None:
            os.close(self._host)
            self._host = None
        if self._mark is not None:
            self._mark_path.unlink(missing_ok=True)
            os.close(self._mark)
            self._mark = None

    @property
    def holding(self) -> bool:
        """Whether the trainer holds the host now (between a checkpoint and ``leave``)."""
        return self._host is not None

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.leave()
