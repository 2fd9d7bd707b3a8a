"""A global channel allocation over every prunable group at once (after HALP, Shen et al.
NeurIPS 2022): a knapsack over per-group channel counts.

NetAdapt's greedy loop shrinks one group per iteration. This chooses every group's count in one
go: each group takes exactly one of its candidate counts; an option's *cost* is the latency it
adds to the network (from the look-up table: the network with only that group changed, minus
the network unchanged), its *value* the importance of the channels it keeps; the allocation
maximises the total value with the total latency within a target. Latency is not exactly a sum
over groups (a pointwise convolution's cost depends on the groups on both its sides), so
``allocate_checked`` re-estimates the chosen network whole and tightens the budget until that
estimate, not only the separable one, meets the target.

Plain data in, plain data out: the engine supplies counts, a latency callable (e.g. the
calibrated ``LatencyTableModel`` over ``NetworkAnalysis.signatures``) and per-channel importance
(e.g. ``GroupPruner.importance``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

#: Latency of a whole network given its channel configuration ``{group: channels}``.
LatencyOf = Callable[[Mapping[str, int]], float]


class InfeasibleAllocation(ValueError):
    """No choice of the allowed counts meets the target (even every group at its cheapest)."""


@dataclass(frozen=True)
class GroupOptions:
    """The counts one group may take, each with its latency cost and its value."""

    name: str
    counts: tuple[int, ...]
    costs: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.counts:
            raise ValueError(f"group '{self.name}' has no candidate channel count")
        if not len(self.counts) == len(self.costs) == len(self.values):
            raise ValueError(f"group '{self.name}': counts, costs and values differ in length")
        if not all(math.isfinite(x) for x in (*self.costs, *self.values)):
            raise ValueError(f"group '{self.name}': costs and values must be finite numbers")


@dataclass(frozen=True)
class Allocation:
    """Every group's chosen count, with the separable latency (base + costs) and total value."""

    counts: dict[str, int]
    latency: float
    value: float


def candidate_counts(current: int, step: int, floor: int) -> list[int]:
    """Counts a group of ``current`` channels may take: ``current`` itself and every multiple of
    ``step`` from ``floor`` up to it, ascending."""
    if step < 1 or current < 1:
        raise ValueError("a group needs at least one channel and a step of at least one")
    low = max(step, math.ceil(floor / step) * step)
    return [*range(low, current, step)] + [current] if low <= current else [current]


def kept_importance(scores: Sequence[float], counts: Sequence[int]) -> list[float]:
    """For each count, the share of the group's total importance that its best ``count``
    channels hold (the channels pruning keeps): 1.0 for the whole group.

    Normalising per group makes groups comparable whatever their size and weight scale; a
    channel of a narrow group is worth more than one of a wide group, which protects the narrow
    early layers latency-driven pruning tends to starve.
    """
    ordered = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if len(ordered) == 0 or np.any(ordered < 0) or not np.all(np.isfinite(ordered)):
        raise ValueError("importance scores must be finite, non-negative and not empty")
    total = ordered.sum()
    cumulative = np.concatenate([[0.0], np.cumsum(ordered)])
    result = []
    for count in counts:
        if not 0 <= count <= len(ordered):
            raise ValueError(f"cannot keep {count} of {len(ordered)} channels")
        result.append(float(cumulative[count] / total) if total > 0 else count / len(ordered))
    return result


def group_options(channels: Mapping[str, int], importance: Mapping[str, Sequence[float]],
                  latency_of: LatencyOf, step: int, floors: Mapping[str, int] | None = None
                  ) -> tuple[float, list[GroupOptions]]:
    """The base latency of ``channels`` and every group's options: cost = the latency of the
    network with only that group changed minus the base latency (the table's delta), value =
    ``kept_importance``. Costs one latency call per (group, count)."""
    floors = floors or {}
    base = float(latency_of(dict(channels)))
    options = []
    for name, current in channels.items():
        counts = candidate_counts(current, step, floors.get(name, step))
        costs = tuple(float(latency_of({**channels, name: c})) - base for c in counts)
        options.append(GroupOptions(name, tuple(counts), costs,
                                    tuple(kept_importance(importance[name], counts))))
    return base, options


def allocate(options: Sequence[GroupOptions], target: float, *, base: float = 0.0,
             resolution: int = 2000) -> Allocation:
    """The counts (one option per group) of largest total value whose latency ``base + Σ cost``
    is at most ``target``.

    Dynamic programming over the latency budget cut into ``resolution`` units, each option's
    cost rounded *up* to whole units, so the result never exceeds the target; it is optimal for
    the rounded costs, hence at least as valuable as the best allocation for a target tighter by
    ``len(options)`` units (``len(options) × (target − cheapest) / resolution``). Costs may be
    negative or non-monotone in the count (the table's staircase); of a group's options of equal
    value the cheapest is preferred.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be an integer >= 1, got {resolution!r}")
    if not options:
        raise ValueError("there are no groups to allocate")
    cheapest = [min(group.costs) for group in options]
    slack = target - base - sum(cheapest)
    if not slack >= 0:
        raise InfeasibleAllocation(
            f"even every group at its cheapest count needs {base + sum(cheapest):.6g}, "
            f"above the target {target:.6g}")
    margin = 0.0
    for _ in range(4):  # float rounding may leave the exact sum a hair above the target
        picked, value = _solve(options, cheapest, slack * (1 - margin), resolution)
        latency = base + sum(group.costs[i] for group, i in zip(options, picked))
        if latency <= target:
            return Allocation({group.name: group.counts[i] for group, i in zip(options, picked)},
                              latency, value)
        margin = max(margin * 10, 1e-12)
    raise InfeasibleAllocation("rounding kept the allocation above the target")  # pragma: no cover


def _solve(options: Sequence[GroupOptions], cheapest: list[float], slack: float, resolution: int
           ) -> tuple[list[int], float]:
    """The knapsack itself: ``best[r]`` is the largest value within ``r`` units of extra cost;
    returns the chosen option index of every group and the total value."""
    unit = slack / resolution if slack > 0 else 1.0
    size = resolution + 1

    def weight(extra: float) -> int:
        if extra <= 0:
            return 0
        return math.ceil(extra / unit) if slack > 0 else size  # no slack: only the cheapest fit

    best = np.zeros(size)
    choices = []
    for group, low in zip(options, cheapest):
        # cheaper options first, so an equal value keeps the cheaper one
        order = sorted(range(len(group.counts)), key=lambda i: (group.costs[i], -group.counts[i]))
        new = np.full(size, -np.inf)
        choice = np.full(size, -1, dtype=np.int64)
        for index in order:
            w = weight(group.costs[index] - low)
            if w >= size:
                continue
            candidate = np.full(size, -np.inf)
            candidate[w:] = best[:size - w] + group.values[index]
            better = candidate > new
            new[better], choice[better] = candidate[better], index
        best = new
        choices.append(choice)
    remaining = resolution
    picked = [0] * len(options)
    for position in reversed(range(len(options))):
        index = int(choices[position][remaining])
        picked[position] = index
        remaining -= weight(options[position].costs[index] - cheapest[position])
    return picked, float(best[resolution])


def allocate_checked(options: Sequence[GroupOptions], target: float, latency_of: LatencyOf, *,
                     base: float = 0.0, resolution: int = 2000, max_rounds: int = 24) -> Allocation:
    """``allocate``, with the chosen network's latency estimated whole by ``latency_of``.

    When the groups interact the separable sum misjudges the whole network, so the separable
    budget is bisected between the cheapest allocation and ``target`` for the largest one whose
    allocation, estimated whole, meets ``target``. Only allocations that were checked whole are
    returned, so the result meets the target whatever the interaction; its ``latency`` is
    ``latency_of``'s.
    """
    def checked(budget: float) -> tuple[Allocation, float]:
        allocation = allocate(options, budget, base=base, resolution=resolution)
        return allocation, float(latency_of(allocation.counts))

    allocation, whole = checked(target)
    if whole <= target:
        return Allocation(allocation.counts, whole, allocation.value)
    low = base + sum(min(group.costs) for group in options)
    cheapest, whole = checked(low)
    if whole > target:
        raise InfeasibleAllocation(
            f"even the cheapest allocation is estimated at {whole:.6g} whole, above the target "
            f"{target:.6g}")
    best = Allocation(cheapest.counts, whole, cheapest.value)
    high = target
    for _ in range(max_rounds):
        middle = (low + high) / 2
        allocation, whole = checked(middle)
        if whole <= target:
            low = middle
            if allocation.value > best.value:
                best = Allocation(allocation.counts, whole, allocation.value)
        else:
            high = middle
    return best
