"""The global channel allocation (a knapsack over every group's count, after HALP) and the
per-group floors it shares with the greedy loop."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from adaptation.netadapt.allocation import (GroupOptions, InfeasibleAllocation, allocate,
                                            allocate_checked, candidate_counts, group_options,
                                            kept_importance)
from adaptation.netadapt.floors import FloorRule, above_floor
from adaptation.netadapt.graph import GroupPruner, NetworkAnalysis, rebuild_pruned
from adaptation.netadapt.models import build_model, example_input


def brute_force(options, target, base=0.0):
    """The best value (and its latency) over every combination whose latency meets ``target``."""
    best = None
    for picks in itertools.product(*(range(len(g.counts)) for g in options)):
        latency = base + sum(g.costs[i] for g, i in zip(options, picks))
        value = sum(g.values[i] for g, i in zip(options, picks))
        if latency <= target + 1e-12 and (best is None or value > best[0] + 1e-12):
            best = (value, latency)
    return best


def random_options(rng: random.Random, integer: bool) -> list[GroupOptions]:
    groups = []
    for g in range(rng.randint(2, 4)):
        n = rng.randint(1, 5)
        counts = tuple(8 * (k + 1) for k in range(n))
        costs = tuple(float(rng.randint(-2, 9)) if integer else rng.uniform(-0.5, 3.0)
                      for _ in counts)
        values = tuple(sorted(rng.uniform(0, 1) for _ in counts))
        groups.append(GroupOptions(f"g{g}", counts, costs, values))
    return groups


def test_integer_costs_give_the_brute_force_optimum():
    rng = random.Random(0)
    for _ in range(200):
        options = random_options(rng, integer=True)
        cheapest = sum(min(g.costs) for g in options)
        slack = rng.randint(0, 12)
        target = cheapest + slack
        # one unit = one latency unit: the rounding is exact and the solution optimal
        result = allocate(options, target, resolution=max(slack, 1))
        expected = brute_force(options, target)
        assert result.latency <= target
        assert result.value == pytest.approx(expected[0])
        picked = {g.name: g.costs[g.counts.index(result.counts[g.name])] for g in options}
        assert result.latency == pytest.approx(sum(picked.values()))


def test_real_costs_stay_within_the_target_and_within_the_proven_bound():
    rng = random.Random(1)
    for _ in range(200):
        options = random_options(rng, integer=False)
        base = rng.uniform(0, 2)
        cheapest = base + sum(min(g.costs) for g in options)
        target = cheapest + rng.uniform(0, 6)
        resolution = rng.choice([5, 50, 2000])
        result = allocate(options, target, base=base, resolution=resolution)
        assert result.latency <= target
        optimum = brute_force(options, target, base)[0]
        assert result.value <= optimum + 1e-9
        unit = (target - cheapest) / resolution
        tighter = brute_force(options, target - len(options) * unit, base)
        if tighter is not None:
            assert result.value >= tighter[0] - 1e-9


def test_a_staircase_is_used_and_ties_keep_the_cheaper_count():
    # 24 channels cost more than 32 (a runtime's padded blocks): never worth choosing
    stairs = GroupOptions("a", (16, 24, 32), (1.0, 3.0, 2.0), (0.5, 0.7, 0.9))
    flat = GroupOptions("b", (8, 16), (0.0, 1.0), (0.4, 0.4))
    result = allocate([stairs, flat], 2.0)
    assert result.counts == {"a": 32, "b": 8} and result.latency == 2.0
    assert allocate([stairs, flat], 1.0).counts == {"a": 16, "b": 8}


def test_an_unreachable_target_is_refused():
    options = [GroupOptions("a", (8, 16), (1.0, 2.0), (0.5, 1.0))]
    with pytest.raises(InfeasibleAllocation, match="cheapest"):
        allocate(options, 0.5, base=0.1)
    with pytest.raises(ValueError):
        allocate(options, 5.0, resolution=0)
    with pytest.raises(ValueError):
        GroupOptions("a", (8, 16), (1.0,), (0.5, 1.0))
    with pytest.raises(ValueError):
        GroupOptions("a", (8,), (float("nan"),), (0.5,))


def test_candidate_counts_and_kept_importance():
    assert candidate_counts(64, 16, 16) == [16, 32, 48, 64]
    assert candidate_counts(40, 16, 20) == [32, 40]        # the floor rounds up to the step
    assert candidate_counts(20, 8, 0) == [8, 16, 20]       # the current count is always allowed
    assert candidate_counts(8, 8, 16) == [8]
    assert kept_importance([1.0, 3.0, 0.0, 4.0], [0, 1, 2, 4]) == \
        pytest.approx([0.0, 0.5, 0.875, 1.0])
    assert kept_importance([0.0, 0.0], [1, 2]) == [0.5, 1.0]
    with pytest.raises(ValueError):
        kept_importance([1.0, -1.0], [1])
    with pytest.raises(ValueError):
        kept_importance([1.0], [2])


def coupled_latency(config):
    """Not separable: a layer between two groups costs the product of their counts."""
    names = sorted(config)
    return (0.01 + sum(0.002 * config[n] for n in names)
            + sum(0.0001 * config[a] * config[b] for a, b in zip(names, names[1:])))


def test_interacting_groups_are_checked_whole():
    channels = {"a": 64, "b": 64, "c": 32}
    importance = {n: torch.linspace(0.1, 1.0, c).tolist() for n, c in channels.items()}
    base, options = group_options(channels, importance, coupled_latency, step=8)
    assert base == coupled_latency(channels)
    for group in options:
        assert group.counts[-1] == channels[group.name] and group.costs[-1] == 0.0
        assert group.values[-1] == pytest.approx(1.0)
    target = 0.5 * base
    separable = allocate(options, target, base=base)
    assert coupled_latency(separable.counts) > target   # the deltas alone overshoot here
    checked = allocate_checked(options, target, coupled_latency, base=base)
    assert checked.latency == coupled_latency(checked.counts) <= target
    # separably the narrowest network would fit, but whole it does not
    narrowest_separable = base + sum(min(g.costs) for g in options)
    narrowest_whole = coupled_latency({"a": 8, "b": 8, "c": 8})
    assert narrowest_separable < narrowest_whole
    with pytest.raises(InfeasibleAllocation, match="whole"):
        allocate_checked(options, (narrowest_separable + narrowest_whole) / 2, coupled_latency,
                         base=base)


def test_an_engine_network_allocated_to_a_macs_target_rebuilds_and_meets_it():
    torch.manual_seed(0)
    model = build_model("mobilenet_v1", 10, in_channels=1, width=0.25, resolution=16)
    sample = example_input(1, 16)
    analysis = NetworkAnalysis(model, sample)
    pruner = GroupPruner(model, sample)
    importance = {name: pruner.importance(name).tolist() for name in analysis.group_names}
    floors = FloorRule(minimum=16, fraction=0.25).floors(analysis.original_config(), 8)

    def macs(config):
        return float(analysis.macs(config))

    base, options = group_options(analysis.original_config(), importance, macs, 8, floors)
    target = 0.6 * base
    result = allocate_checked(options, target, macs, base=base)
    assert result.latency <= target
    assert all(result.counts[n] >= floors[n] for n in analysis.group_names)
    assert any(result.counts[n] < c for n, c in analysis.original_config().items())
    pruned = rebuild_pruned(build_model("mobilenet_v1", 10, 1, 0.25, 16), sample, result.counts)
    assert pruned.eval()(sample).shape == (1, 10)
    assert analysis.macs(result.counts) <= target


def test_floor_rule():
    rule = FloorRule(minimum=16, fraction=0.25)
    assert rule.floors({"a": 32, "b": 256, "c": 8, "d": 100}, 8) == \
        {"a": 16, "b": 64, "c": 8, "d": 32}
    assert FloorRule().floors({"a": 64, "b": 20}, 8) == {"a": 8, "b": 8}
    assert FloorRule(fraction=0.5).floor(40, 16) == 32
    assert FloorRule(minimum=100).floor(48, 16) == 48   # never above the group itself
    assert above_floor([56, 48, 40, 32, 24, 16], 32) == [56, 48, 40, 32]
    for bad in (dict(minimum=-1), dict(minimum=2.5), dict(fraction=1.5), dict(fraction=-0.1),
                dict(fraction=float("nan")), dict(minimum=True)):
        with pytest.raises(ValueError):
            FloorRule(**bad)
    with pytest.raises(ValueError):
        rule.floor(32, 0)
    with pytest.raises(ValueError):
        rule.floor(0, 8)


def test_the_allocation_baseline_meets_its_target_and_trains_as_the_multipliers_do(digits8):
    """bench/tradeoff.py's second latency-driven algorithm: counts from the allocation (here
    against MACs as the latency), then the multipliers' one fine-tune recipe."""
    from adaptation.netadapt.baselines import allocation_baseline, finetuned_baseline
    from adaptation.netadapt.config import AdaptConfig

    torch.manual_seed(0)
    model = build_model("plain_cnn", 10, 1, 0.5, 8).eval()
    sample = example_input(1, 8)
    analysis = NetworkAnalysis(model, sample)
    config = AdaptConfig(metric="latency", short_term_steps=2, long_term_epochs=0, batch_size=64,
                         seed=4, bn_recalibration_batches=0, distillation_alpha=0)

    def macs(config_):
        return float(analysis.macs(config_))

    result = allocation_baseline(model, sample, analysis, digits8, config, macs, 0.6, 6)
    base = macs(analysis.original_config())
    assert macs(result.channels) <= 0.6 * base and result.label == "allocation 0.6"
    assert any(result.channels[n] < c for n, c in analysis.original_config().items())
    assert result.macs == analysis.macs(result.channels)
    by_hand = finetuned_baseline(model, sample, analysis, digits8, config, result.channels,
                                 "same counts", 0.6, 6)
    assert by_hand.validation_accuracy == result.validation_accuracy  # the same recipe, seeded
    assert all(torch.equal(a, b) for a, b in zip(by_hand.model.state_dict().values(),
                                                 result.model.state_dict().values()))
