"""Latency look-up tables and the calibration of their summed estimates.

A table maps a layer signature to the timing statistics of that layer measured alone on one
device (with one runtime and thread count). Summing the entries of a network's layers
overestimates the whole network (per-call overhead, no cross-layer fusion) but correlates with it
almost perfectly, so an affine calibration fitted on whole-network measurements corrects it.
"""
from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

from devices.measure.signature import LayerSignature
from devices.measure.stats import TimingStats

ESTIMATORS = ("min", "p10", "median")


def entry_ms(stats: TimingStats, estimator: str) -> float:
    """The per-entry latency used in sums: min or p10 are far steadier between sessions than the median."""
    if estimator == "min":
        return stats.min_ms
    if estimator == "p10":
        return stats.p10_ms
    if estimator == "median":
        return stats.median_ms
    raise ValueError(f"unknown estimator '{estimator}'; choose one of {ESTIMATORS}")


class LatencyTable(Protocol):
    """What the algorithm needs of a look-up table; the database-backed table implements it too."""

    def lookup(self, signatures: Iterable[LayerSignature]) -> dict[LayerSignature, TimingStats]:
        """Stats of the given signatures that the table holds (missing ones are left out)."""

    def add(self, entries: dict[LayerSignature, TimingStats]) -> None:
        """Store measured entries."""


class MemoryLatencyTable:
    """A look-up table held in memory, saved to and loaded from JSON."""

    def __init__(self, meta: dict | None = None) -> None:
        self.meta = dict(meta or {})
        self.entries: dict[LayerSignature, TimingStats] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, signatures: Iterable[LayerSignature]) -> dict[LayerSignature, TimingStats]:
        return {sig: self.entries[sig] for sig in signatures if sig in self.entries}

    def add(self, entries: dict[LayerSignature, TimingStats]) -> None:
        self.entries.update(entries)

    def to_dict(self) -> dict:
        return {"meta": self.meta,
                "entries": {sig.key(): stats.to_dict() for sig, stats in sorted(self.entries.items())}}

    @classmethod
    def from_dict(cls, data: dict) -> "MemoryLatencyTable":
        table = cls(data.get("meta"))
        table.add({LayerSignature.from_key(k): TimingStats.from_dict(v)
                   for k, v in data.get("entries", {}).items()})
        return table

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "MemoryLatencyTable":
        return cls.from_dict(json.loads(Path(path).read_text()))


def missing_signatures(table: LatencyTable, signatures: Iterable[LayerSignature]) -> list[LayerSignature]:
    """Signatures (deduplicated, in first-seen order) the table does not hold yet."""
    wanted = list(dict.fromkeys(signatures))
    held = table.lookup(wanted)
    return [sig for sig in wanted if sig not in held]


@dataclass
class AffineCalibration:
    """``measured ≈ a · raw_sum + b``, fitted on whole-network measurements.

    With fewer than ``min_points_for_affine`` points it is a plain ratio (b = 0): an affine fit
    through one or two nearby points extrapolates wildly, and two points cannot say which of
    them is off. From then on the fit is robust to one measurement slowed by the machine's load
    (seen: +41%, which moved a plain ratio by 10-12% for several iterations): the ratio is the
    median of the points' ratios, the line a Theil-Sen fit (the median of the pairwise slopes,
    the median intercept).
    """

    points: list[tuple[float, float]] = field(default_factory=list)  # (raw sum ms, measured ms)
    min_points_for_affine: int = 3
    max_slope_factor: float = 2.0  # an affine slope outside [ratio/f, ratio·f] is treated as noise

    def add(self, raw_ms: float, measured_ms: float) -> None:
        if raw_ms <= 0 or measured_ms <= 0:
            raise ValueError("calibration points must be positive latencies")
        self.points.append((float(raw_ms), float(measured_ms)))

    def coefficients(self) -> tuple[float, float]:
        if not self.points:
            return 1.0, 0.0
        if len(self.points) < self.min_points_for_affine:
            return sum(m for _, m in self.points) / sum(r for r, _ in self.points), 0.0
        ratio = statistics.median(m / r for r, m in self.points)
        mean_r = sum(r for r, _ in self.points) / len(self.points)
        slopes = [(m2 - m1) / (r2 - r1)
                  for (r1, m1), (r2, m2) in itertools.combinations(self.points, 2)
                  if abs(r2 - r1) > 1e-9 * mean_r]
        if not slopes:
            return ratio, 0.0
        a = statistics.median(slopes)
        if not ratio / self.max_slope_factor <= a <= ratio * self.max_slope_factor:
            # The points span a narrow range, so noise tilts even a robust line (seen with least
            # squares: slope 0.075 where the ratio was 0.9, after which no pruning could reach a
            # target). The overhead-corrected sum tracks latency roughly in proportion, so a
            # slope far from the ratio is noise: keep the ratio.
            return ratio, 0.0
        return a, statistics.median(m - a * r for r, m in self.points)

    def __call__(self, raw_ms: float) -> float:
        a, b = self.coefficients()
        return a * raw_ms + b

    def quality(self) -> dict:
        """Fit error on its own points: mean absolute percentage error and Pearson correlation."""
        if not self.points:
            return {"points": 0, "mape": None, "pearson": None}
        mape = sum(abs(self(r) - m) / m for r, m in self.points) / len(self.points)
        return {"points": len(self.points), "mape": mape, "pearson": _pearson(self.points)}

    def to_dict(self) -> dict:
        return {"points": [list(p) for p in self.points],
                "min_points_for_affine": self.min_points_for_affine}

    @classmethod
    def from_dict(cls, data: dict) -> "AffineCalibration":
        return cls([tuple(p) for p in data.get("points", [])], data.get("min_points_for_affine", 3))


def _pearson(points: list[tuple[float, float]]) -> float | None:
    n = len(points)
    if n < 3:
        return None
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxy = sum((x - mx) * (y - my) for x, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    syy = sum((y - my) ** 2 for _, y in points)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)
