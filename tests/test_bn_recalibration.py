"""Batch-norm re-estimation before a proposal is scored (EagleEye's adaptive batch norm)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from adaptation.netadapt.bn_recalibration import (batch_norms, recalibrate_batch_norm,
                                                  training_inputs)
from adaptation.netadapt.graph import pruned_copy
from adaptation.netadapt.models import build_model, example_input
from adaptation.netadapt.training import accuracy, train_steps


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6, momentum=0.3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def corrupt(model: nn.Module) -> None:
    for norm in batch_norms(model):
        norm.running_mean.fill_(5.0)
        norm.running_var.fill_(100.0)


def direct_statistics(model: nn.Module, batches: list[torch.Tensor]) -> list[tuple]:
    """Per batch norm: the mean over batches of each batch's input mean and unbiased variance,
    with the batch norms normalising by batch statistics and dropout off, computed from hooks on
    a copy (independent of how torch keeps running averages)."""
    clone = copy.deepcopy(model).eval()
    norms = batch_norms(clone)
    seen: dict[nn.Module, list[torch.Tensor]] = {norm: [] for norm in norms}
    hooks = [norm.register_forward_hook(lambda m, args, out: seen[m].append(args[0].detach()))
             for norm in norms]
    for norm in norms:
        norm.train()
    with torch.no_grad():
        for batch in batches:
            clone(batch)
    for hook in hooks:
        hook.remove()
    result = []
    for norm in norms:
        means = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen[norm]])
        variances = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1, unbiased=True)
                                 for x in seen[norm]])
        result.append((means.mean(0), variances.mean(0)))
    return result


def test_running_statistics_become_those_of_the_data():
    model = small_net()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 1, 8, 8, generator=generator) * 2 + 1 for _ in range(3)]
    expected = direct_statistics(model, batches)
    corrupt(model)
    assert recalibrate_batch_norm(model, iter(batches + batches), max_batches=3) == 3
    for norm, (mean, var) in zip(batch_norms(model), expected):
        assert torch.allclose(norm.running_mean, mean, atol=1e-5)
        assert torch.allclose(norm.running_var, var, rtol=1e-4, atol=1e-5)
        assert norm.num_batches_tracked.item() == 3


def test_pruned_network_statistics_follow_its_new_channels():
    torch.manual_seed(0)
    model = build_model("plain_cnn", 10, in_channels=1, width=0.25, resolution=16)
    pruned = pruned_copy(model, example_input(1, 16), {"features.0.0": 4, "features.2.0": 8})
    generator = torch.Generator().manual_seed(2)
    batches = [torch.randn(32, 1, 16, 16, generator=generator) for _ in range(2)]
    expected = direct_statistics(pruned, batches)
    corrupt(pruned)
    recalibrate_batch_norm(pruned, batches, max_batches=10)
    for norm, (mean, var) in zip(batch_norms(pruned), expected):
        assert torch.allclose(norm.running_mean, mean, atol=1e-5)
        assert torch.allclose(norm.running_var, var, rtol=1e-4, atol=1e-5)


def test_weights_momentum_and_modes_are_left_as_they_were():
    model = small_net()
    model.train()
    model[3].eval()  # a mixed state must come back exactly
    parameters = {name: p.detach().clone() for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    recalibrate_batch_norm(model, [torch.randn(8, 1, 8, 8)], max_batches=1)
    for name, p in model.named_parameters():
        assert torch.equal(p, parameters[name]), name
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert [n.momentum for n in batch_norms(model)] == [0.1, 0.3]


def test_no_batch_keeps_the_old_statistics_and_bad_arguments_are_refused():
    model = small_net()
    corrupt(model)
    assert recalibrate_batch_norm(model, [], max_batches=4) == 0
    assert all(torch.all(n.running_mean == 5.0) for n in batch_norms(model))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_batches"):
            recalibrate_batch_norm(model, [torch.randn(2, 1, 8, 8)], max_batches=bad)


def test_a_failing_batch_leaves_the_statistics_untouched():
    model = small_net()
    corrupt(model)

    def batches():
        yield torch.randn(4, 1, 8, 8)
        yield torch.randn(4, 2, 8, 8)  # wrong channel count: the forward pass raises

    with pytest.raises(RuntimeError):
        recalibrate_batch_norm(model, batches(), max_batches=5)
    assert all(torch.all(n.running_var == 100.0) for n in batch_norms(model))
    assert [n.momentum for n in batch_norms(model)] == [0.1, 0.3]


def test_a_pruned_digits_network_scores_at_least_as_well_after_recalibration(digits16):
    torch.manual_seed(0)
    model = build_model("plain_cnn", 10, in_channels=1, width=0.5, resolution=16)
    train_steps(model, digits16.train, 120, lr=0.05, batch_size=64, seed=0)
    original = accuracy(model, digits16.validation)
    pruned = pruned_copy(model, example_input(1, 16), {"features.1.0": 8, "features.3.0": 16})
    stale = accuracy(pruned, digits16.validation)
    used = recalibrate_batch_norm(pruned, training_inputs(digits16.train, 128, seed=0),
                                  max_batches=8)
    recalibrated = accuracy(pruned, digits16.validation)
    assert used == 8
    assert recalibrated >= stale
    print(f"original {original:.3f}, pruned stale {stale:.3f}, recalibrated {recalibrated:.3f}")
