"""Per-group channel floors: the fewest channels any pruning may leave a group.

Latency-driven choices starve early, narrow layers (16-32 channels), where each channel carries
the most of the network's information; a floor keeps every group at or above
``max(minimum, fraction × original channels)``, rounded up to the channel step. The same floors
serve the greedy loop (which proposals a group may make) and the global allocation (which counts
a group may take).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping


@dataclass(frozen=True)
class FloorRule:
    """At least ``max(minimum, fraction × original)`` channels per group, rounded up to a
    multiple of the channel step and never above the group's original count."""

    minimum: int = 0
    fraction: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.minimum, bool) or not isinstance(self.minimum, int) or self.minimum < 0:
            raise ValueError(f"a floor's minimum must be an integer >= 0, got {self.minimum!r}")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) \
                or not 0 <= self.fraction <= 1:  # NaN fails both comparisons
            raise ValueError(f"a floor's fraction must be a number in [0, 1], got {self.fraction!r}")

    def floor(self, original: int, step: int) -> int:
        """The floor of one group that has ``original`` channels in the original network."""
        _check_step(step)
        if isinstance(original, bool) or not isinstance(original, int) or original < 1:
            raise ValueError(f"a group's channel count must be an integer >= 1, got {original!r}")
        wanted = max(self.minimum, math.ceil(self.fraction * original - 1e-9), step)
        return min(original, math.ceil(wanted / step) * step)

    def floors(self, original: Mapping[str, int], step: int) -> dict[str, int]:
        """Every group's floor, from the original network's channel configuration."""
        return {name: self.floor(count, step) for name, count in original.items()}


def above_floor(counts: Iterable[int], floor: int) -> list[int]:
    """The candidate channel counts a group at ``floor`` may still shrink to (order kept)."""
    return [count for count in counts if count >= floor]


def _check_step(step: int) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"the channel step must be an integer >= 1, got {step!r}")
