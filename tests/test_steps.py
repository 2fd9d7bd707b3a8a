"""The three steps of one NetAdapt iteration: plan (choose counts), evaluate, select."""
from __future__ import annotations

import copy

import pytest
import torch

from adaptation.netadapt.config import AdaptConfig
from adaptation.netadapt.distillation import fine_tune_loss
from adaptation.netadapt.graph import GroupPruner, NetworkAnalysis
from adaptation.netadapt.models import build_model, example_input
from adaptation.netadapt.resources import Estimate, MacsModel
from adaptation.netadapt.schedule import pace_target
from adaptation.netadapt.steps import (NoProposalError, Proposal, ProposalResult, candidate_counts,
                                       enough_choice_target, evaluate_proposal, plan_iteration,
                                       plan_signatures, select_proposal)
from adaptation.netadapt.training import HOOK_EVERY, Cancelled, accuracy, train_steps

pytestmark = pytest.mark.usefixtures("single_torch_thread")

STEP = 8


@pytest.mark.parametrize("current, step, expected", [
    (32, 8, [24, 16, 8]),
    (30, 8, [24, 16, 8]),
    (8, 8, []),
    (9, 8, [8]),
    (16, 8, [8]),
    (7, 4, [4]),
])
def test_candidate_counts_are_multiples_of_the_step_below_the_current_count(current, step, expected):
    assert candidate_counts(current, step) == expected


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(0)
    model = build_model("plain_cnn", 10, 1, 0.5, 16).eval()
    x = example_input(1, 16)
    analysis = NetworkAnalysis(model, x)
    return model, x, analysis


def _check_plan(analysis, channels, plan, target):
    """Every proposal meets the target with the largest count that does; the rest are skipped."""
    proposed = {p.group: p for p in plan.proposals}
    assert set(proposed).isdisjoint(plan.skipped)
    assert set(proposed) | set(plan.skipped) == set(analysis.group_names)
    for group, proposal in proposed.items():
        config = {**channels, group: proposal.channels}
        assert proposal.config == config
        assert proposal.group_index == analysis.group_names.index(group)
        assert proposal.estimate.value == analysis.macs(config)
        assert proposal.macs == analysis.macs(config)
        assert proposal.params == analysis.params(config)
        assert proposal.estimate.value <= target
        assert proposal.channels % STEP == 0 and STEP <= proposal.channels < channels[group]
        larger = proposal.channels + STEP
        if larger < channels[group]:
            assert analysis.macs({**channels, group: larger}) > target
    for group, reason in plan.skipped.items():
        assert isinstance(reason, str) and reason
        for count in candidate_counts(channels[group], STEP):
            assert analysis.macs({**channels, group: count}) > target


@pytest.mark.parametrize("fraction", [0.99, 0.9, 0.78])
def test_plan_proposes_the_largest_count_meeting_the_target(plain, fraction):
    _, _, analysis = plain
    channels = analysis.original_config()
    r0 = analysis.macs(channels)
    target = fraction * r0
    plan = plan_iteration(analysis, channels, MacsModel(), 3, target, STEP)
    assert plan.iteration == 3 and plan.target == target
    assert plan.current.value == r0
    assert plan.proposals
    _check_plan(analysis, channels, plan, target)


def test_plan_skips_groups_that_cannot_meet_the_target_with_a_reason(plain):
    _, _, analysis = plain
    channels = analysis.original_config()
    target = 0.78 * analysis.macs(channels)
    plan = plan_iteration(analysis, channels, MacsModel(), 0, target, STEP)
    # Shrinking the last group to 8 leaves ~0.797 R0; the first two groups cannot go below 8.
    assert {"features.6.0", "features.1.0", "features.0.0"} <= set(plan.skipped)
    assert "8 channels do not meet the target" in plan.skipped["features.6.0"]
    assert {p.group: p.channels for p in plan.proposals} == {
        "features.5.0": 16, "features.4.0": 16, "features.3.0": 8, "features.2.0": 8}


def test_plan_skips_groups_already_at_the_minimum(plain):
    _, _, analysis = plain
    channels = {**analysis.original_config(), "features.3.0": 8}
    target = 0.99 * analysis.macs(channels)
    plan = plan_iteration(analysis, channels, MacsModel(), 0, target, STEP)
    assert "minimum" in plan.skipped["features.3.0"]
    assert "features.3.0" not in {p.group for p in plan.proposals}
    _check_plan(analysis, channels, plan, target)


def test_plan_has_no_proposal_when_nothing_meets_the_target(plain):
    _, _, analysis = plain
    channels = analysis.original_config()
    plan = plan_iteration(analysis, channels, MacsModel(), 0, 0.1 * analysis.macs(channels), STEP)
    assert plan.proposals == []
    assert set(plan.skipped) == set(analysis.group_names)


class EightIsSlow(MacsModel):
    """MACs, except that a conv with 8 output channels falls off the fast kernels: the staircase
    of a runtime's blocked layouts (a smaller count is not always cheaper)."""

    def estimate(self, signatures):
        total = super().estimate(signatures).value
        total += 10 ** 9 * sum(s.op == "conv" and s.out_channels == 8 for s in signatures)
        return Estimate(total, total)


@pytest.mark.parametrize("resource", [MacsModel(), EightIsSlow()], ids=["macs", "staircase"])
def test_a_group_that_cannot_meet_the_target_offers_its_nearest_count(plain, resource):
    _, _, analysis = plain
    channels = {**analysis.original_config(), "features.3.0": 8}
    current = resource.estimate(analysis.signatures(channels)).value
    plan = plan_iteration(analysis, channels, resource, 0, 0.1 * current, STEP)
    assert plan.proposals == []
    nearest = {p.group: p for p in plan.nearest}
    for group in analysis.group_names:
        estimates = {c: resource.estimate(analysis.signatures({**channels, group: c})).value
                     for c in candidate_counts(channels[group], STEP)}
        if not estimates or min(estimates.values()) >= current:
            assert group not in nearest  # at its minimum, or nothing below lowers the resource
            continue
        proposal = nearest[group]
        best = min(estimates.values())
        assert proposal.estimate.value == best
        assert proposal.channels == max(c for c, value in estimates.items() if value == best)
        assert proposal.config == {**channels, group: proposal.channels}
        assert proposal.macs == analysis.macs(proposal.config)
    assert "features.3.0" not in nearest and len(nearest) >= 3
    if isinstance(resource, EightIsSlow):  # the nearest count is not the smallest one
        assert any(p.channels > STEP for p in nearest.values())


def test_plan_offers_no_nearest_count_for_a_group_that_meets_the_target(plain):
    _, _, analysis = plain
    channels = analysis.original_config()
    plan = plan_iteration(analysis, channels, MacsModel(), 0, 0.78 * analysis.macs(channels), STEP)
    assert plan.proposals
    assert {p.group for p in plan.nearest} <= set(plan.skipped)
    assert not {p.group for p in plan.nearest} & {p.group for p in plan.proposals}


def test_enough_choice_target_asks_for_the_cut_enough_groups_can_make():
    best = [5.0, 7.0, 8.0, 10.0]  # each group's lowest reachable estimate; the network is at 10
    assert enough_choice_target(best, 10.0, 6.0, 0) == 6.0     # off: the schedule's target
    assert enough_choice_target(best, 10.0, 6.0, 1) == 6.0     # one group meets it: enough
    assert enough_choice_target(best, 10.0, 6.0, 2) == 7.0     # the second-best group's limit
    assert enough_choice_target(best, 10.0, 6.0, 3) == 8.0
    assert enough_choice_target(best, 10.0, 6.0, 9) == 8.0     # only three groups lower it at all
    assert enough_choice_target(best, 10.0, 9.0, 3) == 9.0     # three meet it already
    assert enough_choice_target([10.0, 12.0], 10.0, 6.0, 3) == 6.0  # none can lower it


def test_keep_pace_undoes_the_smaller_cut_only_as_far_as_the_budget_still_needs():
    best = [5.0, 7.0, 8.0, 10.0]  # as above: three groups lower it; the schedule asks for 6
    assert enough_choice_target(best, 10.0, 6.0, 3, pace=9.0) == 8.0   # the choice keeps pace
    assert enough_choice_target(best, 10.0, 6.0, 3, pace=7.5) == 7.5   # the pace, not 8
    assert enough_choice_target(best, 10.0, 6.0, 3, pace=5.5) == 6.0   # never past the schedule
    assert enough_choice_target([6.5, 9.0], 10.0, 6.0, 2, pace=6.2) == 6.5  # the best one group
    assert enough_choice_target(best, 10.0, 6.0, 1, pace=9.0) == 6.0   # enough choice: schedule
    assert pace_target(10.0, 5.0, 5) == 9.0 and pace_target(10.0, 5.0, 1) == 5.0


@pytest.mark.parametrize("resource", [MacsModel(), EightIsSlow()], ids=["macs", "staircase"])
def test_min_proposals_asks_for_a_smaller_cut_when_too_few_groups_can_make_the_scheduled_one(plain, resource):
    _, _, analysis = plain
    channels = analysis.original_config()
    current = resource.estimate(analysis.signatures(channels)).value
    scheduled = 0.78 * current
    best = {group: min(resource.estimate(analysis.signatures({**channels, group: c})).value
                       for c in candidate_counts(channels[group], STEP))
            for group in analysis.group_names if candidate_counts(channels[group], STEP)}
    meeting = sum(value <= scheduled for value in best.values())
    reachable = sorted(value for value in best.values() if value < current)
    assert 0 < meeting < len(reachable)  # the case: some groups meet it, more could shrink
    plain_plan = plan_iteration(analysis, channels, resource, 0, scheduled, STEP)
    assert len(plain_plan.proposals) == meeting and plain_plan.target == scheduled
    wanted = meeting + 1
    plan = plan_iteration(analysis, channels, resource, 0, scheduled, STEP, min_proposals=wanted)
    assert plan.target == reachable[wanted - 1] > scheduled
    assert len(plan.proposals) >= wanted
    for proposal in plan.proposals:  # the largest count meeting the smaller cut
        assert proposal.estimate.value <= plan.target
        larger = [c for c in candidate_counts(channels[proposal.group], STEP) if c > proposal.channels]
        assert all(resource.estimate(analysis.signatures({**channels, proposal.group: c})).value
                   > plan.target for c in larger)
    enough = plan_iteration(analysis, channels, resource, 0, scheduled, STEP, min_proposals=meeting)
    assert enough.target == scheduled and len(enough.proposals) == meeting


def test_plan_signatures_cover_every_candidate_network(plain):
    _, _, analysis = plain
    channels = analysis.original_config()
    wanted = plan_signatures(analysis, channels, STEP)
    assert len(wanted) == len(set(wanted))
    wanted = set(wanted)
    assert set(analysis.signatures(channels)) <= wanted
    for group in analysis.group_names:
        for count in candidate_counts(channels[group], STEP):
            assert set(analysis.signatures({**channels, group: count})) <= wanted


# ---------------------------------------------------------------- evaluation


def test_evaluate_proposal_prunes_finetunes_and_scores_a_copy(plain, digits16):
    model, x, analysis = plain
    channels = analysis.original_config()
    plan = plan_iteration(analysis, channels, MacsModel(), 0, 0.95 * analysis.macs(channels), STEP)
    proposal = plan.proposals[0]
    config = AdaptConfig(metric="macs", short_term_steps=3, batch_size=32)
    before = copy.deepcopy(model.state_dict())
    loss_fn = fine_tune_loss(config, model)
    result, candidate = evaluate_proposal(model, x, proposal, digits16, config, iteration=0, loss_fn=loss_fn)
    again, candidate2 = evaluate_proposal(model, x, proposal, digits16, config, iteration=0, loss_fn=loss_fn)
    # The original is untouched; the candidate has the proposed channels.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert GroupPruner(candidate, x).channels() == proposal.config
    assert result.proposal is proposal
    assert result.holdout_accuracy == accuracy(candidate, digits16.holdout)
    with torch.no_grad():  # the holdout loss: mean cross-entropy over the whole holdout
        candidate.eval()
        logits = candidate(digits16.holdout.batch(torch.arange(len(digits16.holdout))))
        expected = torch.nn.functional.cross_entropy(logits, digits16.holdout.labels).item()
    assert result.holdout_loss == pytest.approx(expected, rel=1e-5)
    # Seeded by (seed, iteration, group index) only: the same call gives the same weights.
    assert all(torch.equal(a, b) for a, b in zip(candidate.state_dict().values(),
                                                  candidate2.state_dict().values()))
    assert again.holdout_accuracy == result.holdout_accuracy


# ---------------------------------------------------------------- the training hook


def test_the_training_hook_sees_every_few_dozen_steps_and_a_cancel_stops_the_fine_tune(plain, digits16):
    model = copy.deepcopy(plain[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[tuple[int, int]] = []

    def cancel_after_two_checks(done: int, total: int) -> None:
        seen.append((done, total))
        if len(seen) == 3:
            raise Cancelled("no longer wanted")

    with pytest.raises(Cancelled) as info:
        train_steps(model, digits16.train, 20_000, lr=0.01, batch_size=32, seed=0, hook=cancel_after_two_checks)
    assert seen == [(0, 20_000), (HOOK_EVERY, 20_000), (2 * HOOK_EVERY, 20_000)]
    assert (info.value.steps_done, info.value.steps_total) == (2 * HOOK_EVERY, 20_000)
    assert info.value.where() == f"after {2 * HOOK_EVERY} of 20,000 fine-tune steps"
    assert not model.training  # left usable, not half in training mode
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # 50 steps ran


def test_a_hook_that_lets_the_fine_tune_run_changes_nothing(plain, digits16):
    hooked, plain_copy = copy.deepcopy(plain[0]), copy.deepcopy(plain[0])
    calls: list[int] = []
    loss = train_steps(hooked, digits16.train, 60, lr=0.01, batch_size=32, seed=0,
                       hook=lambda done, total: calls.append(done))
    assert loss == train_steps(plain_copy, digits16.train, 60, lr=0.01, batch_size=32, seed=0)
    assert calls == [0, 25, 50, 60]  # and once at the end
    assert all(torch.equal(a, b) for a, b in zip(hooked.state_dict().values(), plain_copy.state_dict().values()))


def test_evaluate_proposal_passes_the_hook_to_its_fine_tune(plain, digits16):
    model, x, analysis = plain
    channels = analysis.original_config()
    proposal = plan_iteration(analysis, channels, MacsModel(), 0, 0.95 * analysis.macs(channels), STEP).proposals[0]
    config = AdaptConfig(metric="macs", short_term_steps=20_000, batch_size=32)

    def cancelled(done: int, total: int) -> None:
        raise Cancelled("the job was cancelled")

    with pytest.raises(Cancelled) as info:
        evaluate_proposal(model, x, proposal, digits16, config, iteration=0, hook=cancelled,
                          loss_fn=fine_tune_loss(config, model))
    assert (info.value.steps_done, info.value.steps_total) == (0, 20_000)


# ---------------------------------------------------------------- selection


def _result(group: str, accuracy_: float, resource: float, index: int = 0,
            loss: float | None = None) -> ProposalResult:
    estimate = Estimate(resource, resource)
    proposal = Proposal(group, index, 8, {group: 8}, estimate, int(resource), 0)
    return ProposalResult(proposal, accuracy_, 0.0, 0.0, 0.0, holdout_loss=loss)


def test_select_by_accuracy_picks_the_best_holdout_accuracy():
    results = [_result("a", 0.80, 50), _result("b", 0.90, 95), _result("c", 0.85, 10)]
    assert select_proposal(results, "accuracy", 0.95, 100) == 1


def test_select_by_accuracy_breaks_ties_towards_the_smaller_resource():
    results = [_result("a", 0.90, 80), _result("b", 0.90, 60), _result("c", 0.90, 70),
               _result("d", 0.50, 10)]
    assert select_proposal(results, "accuracy", 0.95, 100) == 1


def test_select_by_loss_per_resource_picks_the_least_loss_per_unit_saved():
    # Previous: accuracy 0.90 at resource 100.
    results = [
        _result("a", 0.88, 90),  # 0.02 lost / 10 saved = 0.0020
        _result("b", 0.80, 20),  # 0.10 lost / 80 saved = 0.00125  <- least per unit
        _result("c", 0.89, 97),  # 0.01 lost / 3 saved  = 0.0033
    ]
    assert select_proposal(results, "loss_per_resource", 0.90, 100) == 1
    # The accuracy rule would pick c instead.
    assert select_proposal(results, "accuracy", 0.90, 100) == 2


def test_select_by_loss_per_resource_prefers_an_accuracy_gain():
    results = [_result("a", 0.89, 50), _result("b", 0.91, 98)]  # b gains accuracy: negative loss
    assert select_proposal(results, "loss_per_resource", 0.90, 100) == 1


def test_select_by_holdout_loss_picks_the_lowest_loss_not_the_best_top1():
    results = [_result("a", 0.90, 80, loss=0.41), _result("b", 0.89, 80, loss=0.35),
               _result("c", 0.91, 80, loss=0.52)]
    assert select_proposal(results, "holdout_loss", 0.95, 100) == 1
    assert select_proposal(results, "accuracy", 0.95, 100) == 2


def test_select_by_holdout_loss_breaks_ties_towards_the_smaller_resource():
    results = [_result("a", 0.90, 80, loss=0.3), _result("b", 0.90, 60, loss=0.3)]
    assert select_proposal(results, "holdout_loss", 0.95, 100) == 1


def test_select_by_holdout_loss_refuses_results_scored_without_it():
    with pytest.raises(ValueError, match="no holdout loss"):
        select_proposal([_result("a", 0.9, 50, loss=0.2), _result("b", 0.9, 40)], "holdout_loss",
                        0.95, 100)


def test_a_proposal_result_keeps_its_holdout_loss_across_a_checkpoint():
    result = _result("a", 0.9, 50, loss=0.25)
    assert ProposalResult.from_state(result.to_state()).holdout_loss == 0.25
    old = {k: v for k, v in result.to_state().items() if k != "holdout_loss"}
    assert ProposalResult.from_state(old).holdout_loss is None  # checkpoints from before


def test_select_rejects_no_results_and_unknown_rules():
    with pytest.raises(NoProposalError):
        select_proposal([], "accuracy", 0.9, 100)
    with pytest.raises(ValueError, match="unknown selection rule"):
        select_proposal([_result("a", 0.9, 50)], "fastest", 0.9, 100)
