"""The levers beyond the paper, wired into the engine: batch-norm re-estimation before scoring,
distillation from the original in every fine-tune (NetAdapt's and the uniform baseline's),
per-group channel floors, and the settings and presets that choose them."""
from __future__ import annotations

import copy

import pytest
import torch

from adaptation.netadapt.baselines import uniform_baseline, uniform_channels
from adaptation.netadapt.bn_recalibration import batch_norms, recalibrate_for_scoring
from adaptation.netadapt.config import PRESETS, AdaptConfig, SettingsError, preset_settings
from adaptation.netadapt.distillation import DistillationLoss, fine_tune_loss
from adaptation.netadapt.floors import FloorRule
from adaptation.netadapt.graph import NetworkAnalysis, pruned_copy
from adaptation.netadapt.loop import FinishRecord, IterationRecord, NetAdapt, long_term_finetune
from adaptation.netadapt.models import build_model, example_input
from adaptation.netadapt.resources import Estimate, MacsModel
from adaptation.netadapt.steps import (Proposal, evaluate_proposal, plan_configs, plan_iteration,
                                       plan_signatures)
from adaptation.netadapt.training import accuracy, train_steps

PAPER = PRESETS["paper"]
X = example_input(1, 16)


@pytest.fixture(scope="module")
def net(digits16):
    """plain_cnn x0.5 on 16-px digits, trained 120 steps (seeded): 97% on the holdout."""
    torch.manual_seed(0)
    model = build_model("plain_cnn", 10, in_channels=1, width=0.5, resolution=16)
    train_steps(model, digits16.train, 120, lr=0.05, batch_size=64, seed=0)
    return model.eval()


def config(**changes) -> AdaptConfig:
    return AdaptConfig(**{"metric": "macs", "batch_size": 64, **PAPER, **changes})


# ---------------------------------------------------------------- settings and presets


def test_the_paper_preset_turns_every_lever_off_and_the_defaults_turn_them_on():
    paper = AdaptConfig(**preset_settings("paper"))
    assert (paper.bn_recalibration_batches, paper.distillation_alpha, paper.floor_rule(),
            paper.min_proposals) == (0, 0, None, 0)
    default = AdaptConfig()
    assert default.bn_recalibration_batches > 0 and default.distillation_alpha > 0
    assert default.min_proposals > 0
    assert preset_settings("recommended")["distillation_alpha"] == default.distillation_alpha
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        preset_settings("fast")


def test_a_stored_configuration_without_the_levers_runs_as_it_did():
    stored = {k: v for k, v in AdaptConfig().to_dict().items() if k not in PAPER}
    assert AdaptConfig.from_dict(stored) == AdaptConfig(**PAPER)


@pytest.mark.parametrize("name, value, message", [
    ("bn_recalibration_batches", -1, "bn_recalibration_batches must be a whole number from 0 to 1,000"),
    ("distillation_alpha", 1.5, "distillation_alpha must be a number from 0 to 1, not 1.5"),
    ("distillation_temperature", 0, "distillation_temperature must be a number above 0"),
    ("floor_minimum", 2.5, "floor_minimum must be a whole number"),
    ("floor_fraction", -0.1, "floor_fraction must be a number from 0 to 1"),
])
def test_lever_settings_are_held_to_their_ranges(name, value, message):
    with pytest.raises(SettingsError) as info:
        AdaptConfig(**{name: value})
    assert list(info.value.problems) == [name] and info.value.problems[name].startswith(message)


# ---------------------------------------------------------------- batch-norm re-estimation


def test_a_proposal_is_scored_after_its_batch_norm_statistics_are_re_estimated(net, digits16):
    # Without a fine-tune, shrinking features.2.0 to 8 channels leaves the next batch norms with
    # the statistics of 32 inputs: 32% on the holdout; re-estimated on 8 batches, 89%.
    proposal = Proposal("features.2.0", 2, 8, {}, Estimate(0, 0), 0, 0)
    stale, stale_net = evaluate_proposal(net, X, proposal, digits16, config(short_term_steps=0), 0)
    fresh, fresh_net = evaluate_proposal(net, X, proposal, digits16,
                                         config(short_term_steps=0, bn_recalibration_batches=8), 0)
    assert fresh.holdout_accuracy >= stale.holdout_accuracy + 0.3
    means = [(a.running_mean, b.running_mean) for a, b in zip(batch_norms(stale_net), batch_norms(fresh_net))]
    assert any(not torch.allclose(a, b) for a, b in means)
    # The weights are the same: only the statistics changed.
    weights = lambda model: [v for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k]
    assert all(torch.equal(a, b) for a, b in zip(weights(stale_net), weights(fresh_net)))


def test_the_long_term_fine_tune_ends_with_re_estimated_statistics(net, digits16):
    chosen = config(long_term_epochs=0.05, bn_recalibration_batches=4)
    tuned, expected = copy.deepcopy(net), copy.deepcopy(net)
    long_term_finetune(tuned, digits16, chosen)
    long_term_finetune(expected, digits16, config(long_term_epochs=0.05))
    recalibrate_for_scoring(expected, digits16.train, batches=4, batch_size=64, seed=chosen.seed)
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), expected.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), net.state_dict().values()))


# ---------------------------------------------------------------- distillation


def test_a_distilling_run_needs_its_teacher(net, digits16):
    proposal = Proposal("features.2.0", 2, 8, {}, Estimate(0, 0), 0, 0)
    with pytest.raises(ValueError, match="distils from the original network"):
        evaluate_proposal(net, X, proposal, digits16, config(distillation_alpha=0.5), 0)
    with pytest.raises(ValueError, match="distils from the original network"):
        long_term_finetune(copy.deepcopy(net), digits16, config(distillation_alpha=0.5))
    assert fine_tune_loss(config(), net) is None


def test_the_engine_distils_every_fine_tune_from_the_original(net, digits16):
    distilling = config(distillation_alpha=0.7, short_term_steps=3, long_term_epochs=0.05,
                        budget=0.9, max_iterations=1)
    engine = NetAdapt(net, X, digits16, distilling, MacsModel())
    assert isinstance(engine.loss_fn, DistillationLoss) and engine.loss_fn.alpha == 0.7
    calls = []
    engine.loss_fn.teacher.register_forward_hook(lambda *_: calls.append(1))
    records = list(engine.run())
    iteration = next(r for r in records if isinstance(r, IterationRecord))
    finish = next(r for r in records if isinstance(r, FinishRecord))
    long_term_steps = round(0.05 * -(-len(digits16.train) // 64))
    # One teacher forward pass per step: every proposal's 3 steps, then the long-term ones.
    assert len(calls) == 3 * len(iteration.proposals) + long_term_steps and finish.long_term_s > 0
    assert NetAdapt(net, X, digits16, config(), MacsModel()).loss_fn is None


def test_the_uniform_baseline_gets_the_same_recipe(net, digits16):
    analysis = NetworkAnalysis(net, X)
    levers = config(distillation_alpha=0.5, bn_recalibration_batches=4, long_term_epochs=0)
    baseline = uniform_baseline(net, X, analysis, digits16, levers, 0.5, 20)
    # By hand: the same pruning, a fine-tune distilled from the original, statistics re-estimated.
    by_hand = pruned_copy(net, X, uniform_channels(analysis.original_config(), 0.5, 8))
    train_steps(by_hand, digits16.train, 20, lr=levers.short_term_lr, batch_size=64,
                seed=levers.seed + 104729, weight_decay=levers.weight_decay,
                loss_fn=DistillationLoss(net, 4.0, 0.5))
    recalibrate_for_scoring(by_hand, digits16.train, batches=4, batch_size=64, seed=levers.seed)
    assert all(torch.equal(a, b) for a, b in zip(baseline.model.state_dict().values(),
                                                  by_hand.state_dict().values()))
    assert baseline.holdout_accuracy == accuracy(by_hand, digits16.holdout)
    plain = uniform_baseline(net, X, analysis, digits16, config(long_term_epochs=0), 0.5, 20)
    assert not all(torch.equal(a, b) for a, b in zip(baseline.model.state_dict().values(),
                                                      plain.model.state_dict().values()))


# ---------------------------------------------------------------- floors


def test_no_group_is_proposed_below_its_floor(net):
    analysis = NetworkAnalysis(net, X)
    channels = analysis.original_config()  # the two first groups have 16 channels
    target = 0.97 * analysis.macs(channels)
    free = plan_iteration(analysis, channels, MacsModel(), 0, target, 8)
    assert {"features.0.0", "features.1.0"} <= {p.group for p in free.proposals}
    floored = plan_iteration(analysis, channels, MacsModel(), 0, target, 8, FloorRule(minimum=16))
    assert not {"features.0.0", "features.1.0"} & {p.group for p in floored.proposals}
    assert floored.skipped["features.0.0"] == "already at its floor of 16 channels"
    half = plan_iteration(analysis, channels, MacsModel(), 0, target, 8, FloorRule(fraction=0.5))
    assert all(p.channels >= channels[p.group] // 2 for p in half.proposals)
    # Nothing below a floor is even looked up (a latency table would measure it for nothing).
    rule = FloorRule(fraction=0.5)
    assert all(config[g] >= channels[g] // 2 for config in plan_configs(analysis, channels, 8, rule)
               for g in config)
    assert len(plan_signatures(analysis, channels, 8, rule)) < len(plan_signatures(analysis, channels, 8))


def test_the_engine_keeps_every_group_above_the_configured_floor(net, digits16):
    floored = config(floor_fraction=0.75, short_term_steps=1, long_term_epochs=0, budget=0.85,
                     initial_reduction=0.05, max_iterations=4)
    records = list(NetAdapt(net, X, digits16, floored, MacsModel()).run())
    original = NetworkAnalysis(net, X).original_config()
    finish = records[-1]
    assert isinstance(finish, FinishRecord) and finish.iterations >= 2
    assert all(finish.channels[g] >= 0.75 * original[g] for g in original)
    assert any("floor" in why for r in records if isinstance(r, IterationRecord) for why in r.skipped.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU here")
def test_the_levers_run_on_a_cuda_training_device_and_leave_the_networks_on_the_cpu(net, digits16):
    levers = config(distillation_alpha=0.5, bn_recalibration_batches=4, short_term_steps=5)
    loss_fn = fine_tune_loss(levers, net)
    proposal = Proposal("features.2.0", 2, 8, {}, Estimate(0, 0), 0, 0)
    result, candidate = evaluate_proposal(net, X, proposal, digits16, levers, 0, device="cuda",
                                          loss_fn=loss_fn)
    assert {p.device.type for p in candidate.parameters()} == {"cpu"}
    assert {b.device.type for b in candidate.buffers()} == {"cpu"}
    assert result.holdout_accuracy == accuracy(candidate, digits16.holdout)
