"""This host's lock in the application: measurements of the server's CPU take it, fine-tunes pause.

``devices.measure.host_lock`` is the mechanism; this module gives it its folder
(``settings.HOST_LOCK_DIR``) and states the rules:

- **Who honours it**: every fine-tune run by this application's workers (proposal tasks, the job
  runner's own fine-tunes, child jobs) through its training hook (``HostTurns``, called every
  ``training.HOOK_EVERY`` steps and once at the end); any other CPU-heavy step loop can do the same.
  Measurements on agents (remote devices) do not take it.
- **No starvation**: a measurement waits for at most one step chunk of each running fine-tune
  (at most ``HOST_LOCK_WAIT_SECONDS``); fine-tunes wait only for the measurement pending when
  they reach their hook.
- **Retakes**: a measurement is *disturbed* when it could not have the host within
  ``HOST_LOCK_WAIT_SECONDS`` or when a network's timing spread ((p90 - p10) / median) stays above
  the protocol's ``max_spread`` after the protocol's own retries. A disturbed measurement of whole
  networks is retaken (the lock taken anew) at most ``MEASURE_RETAKES`` times; the best attempt is
  kept (one under the lock before one without, then the smallest worst spread) and the request
  says so. Layers are not retaken: they are stored as they are timed, and the layer measurer's
  own sentinel rule re-times chunks timed under load.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from django.conf import settings

from devices.measure.host_lock import Hold, HostLock, Trainer


def host_lock() -> HostLock:
    """The lock of this host (its folder from ``settings.HOST_LOCK_DIR``)."""
    return HostLock(settings.HOST_LOCK_DIR)


def lock_wait_seconds() -> float:
    return float(settings.HOST_LOCK_WAIT_SECONDS)


def measure_retakes() -> int:
    return int(settings.MEASURE_RETAKES)


@dataclass
class HostNote:
    """What taking the host cost one measurement, stored on its request (``host_lock``).

    ``waited_s``: total wait for the lock over its attempts; ``trainers``: the most fine-tunes
    that had to pause for one attempt; ``held``: whether the kept attempt had the host;
    ``retaken``: attempts after the first; ``why``: why each retake (or the last attempt) was
    disturbed; ``kept_disturbed``: the retakes ran out and a disturbed attempt was kept.
    """

    waited_s: float = 0.0
    trainers: int = 0
    held: bool = True
    retaken: int = 0
    why: list[str] = field(default_factory=list)
    kept_disturbed: bool = False

    def add(self, hold: Hold) -> None:
        self.waited_s += hold.waited_s
        self.trainers = max(self.trainers, hold.trainers)

    def to_dict(self) -> dict:
        return {**asdict(self), "waited_s": round(self.waited_s, 3)}

    def worth_telling(self) -> bool:
        return bool(self.trainers or self.retaken or not self.held or self.kept_disturbed)

    def describe(self, what: str) -> str:
        """One line for the job's log: ``"The measurement of iteration 3 network waited 0.8 s for
        2 fine-tunes on this host to pause; retaken once (spread 0.61 above 0.5)."``"""
        parts = []
        if self.trainers:
            parts.append(f"waited {self.waited_s:.1f} s for {self.trainers} fine-tune"
                         f"{'s' if self.trainers != 1 else ''} on this host to pause")
        if self.retaken:
            times = "once" if self.retaken == 1 else f"{self.retaken} times"
            parts.append(f"retaken {times} ({'; '.join(self.why[:self.retaken])})")
        if self.kept_disturbed:
            kept = (f"kept the best of {self.retaken + 1} disturbed attempts" if self.retaken
                    else "kept a disturbed attempt")
            parts.append(f"{kept} ({self.why[-1]})")
        elif not self.held:
            parts.append("measured without the host to itself")
        return f"The measurement of {what} " + "; ".join(parts or ["took the host at once"]) + "."


def disturbance(hold: Hold, spreads: list[float], max_spread: float, wait_s: float) -> str:
    """Why an attempt is disturbed ("" when it is not); see the module docstring."""
    if not hold.acquired:
        return f"the host was not free within {wait_s:g} s"
    worst = max(spreads, default=0.0)
    if worst > max_spread:
        return f"spread {worst:.2f} above {max_spread:g}"
    return ""


class HostTurns:
    """The host-lock part of a training hook: call it as ``turns(done, total)`` from the hook.

    At each call the fine-tune lets a pending measurement run, then holds the host again; at the
    last call (``done == total``) it lets go. ``close()`` (or ``with``) lets go too: a fine-tune
    that stopped early (cancel, error) holds nothing. ``pauses``/``paused_s``: how often and how
    long it waited for measurements.
    """

    def __init__(self, lock: HostLock | None = None) -> None:
        self.trainer: Trainer = (lock or host_lock()).trainer()

    def __call__(self, done: int, total: int) -> None:
        if done >= total:
            self.trainer.leave()
        else:
            self.trainer.checkpoint()

    @property
    def pauses(self) -> int:
        return self.trainer.pauses

    @property
    def paused_s(self) -> float:
        return self.trainer.paused_s

    def describe(self) -> str:
        """``"paused 2 times (1.3 s) for measurements on this host"``, or "" when it never paused."""
        if not self.pauses:
            return ""
        times = "once" if self.pauses == 1 else f"{self.pauses} times"
        return f"paused {times} ({self.paused_s:.1f} s) for measurements on this host"

    def close(self) -> None:
        self.trainer.leave()

    def __enter__(self) -> "HostTurns":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
