"""The three steps of one NetAdapt iteration as plain functions: plan, evaluate one proposal, select.

The generator in ``loop.py`` composes them; a distributed runner can instead evaluate the
proposals of a plan in parallel (each call needs only the current model and its proposal).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from devices.measure.signature import LayerSignature

from .bn_recalibration import recalibrate_for_scoring
from .config import AdaptConfig
from .data import DatasetSplits
from .floors import FloorRule, above_floor
from .graph import ChannelConfig, NetworkAnalysis, pruned_copy
from .resources import Estimate, ResourceModel
from .training import DeviceLike, TrainingHook, TrainingLoss, scores, train_steps


class NoProposalError(RuntimeError):
    """No group can be shrunk enough to meet an iteration's target."""


@dataclass(frozen=True)
class Proposal:
    """Shrink one group to ``channels``; the estimate is of the whole resulting network."""

    group: str
    group_index: int
    channels: int
    config: ChannelConfig
    estimate: Estimate
    macs: int
    params: int

    def to_dict(self) -> dict:
        return {"group": self.group, "group_index": self.group_index, "channels": self.channels,
                "resource": self.estimate.value, "resource_raw": self.estimate.raw,
                "macs": self.macs, "params": self.params}

    def to_state(self) -> dict:
        """``to_dict`` plus the channel configuration: enough to rebuild the proposal elsewhere."""
        return {**self.to_dict(), "config": dict(self.config)}

    @classmethod
    def from_state(cls, data: Mapping) -> "Proposal":
        return cls(group=data["group"], group_index=data["group_index"], channels=data["channels"],
                   config=dict(data["config"]),
                   estimate=Estimate(data["resource"], data["resource_raw"]), macs=data["macs"],
                   params=data["params"])


@dataclass
class ProposalResult:
    """A proposal after its short-term fine-tune, scored on the holdout set."""

    proposal: Proposal
    holdout_accuracy: float
    train_loss: float
    finetune_s: float
    evaluate_s: float
    #: Mean cross-entropy on the holdout; None in checkpoints written before it was kept.
    holdout_loss: float | None = None

    def to_dict(self) -> dict:
        scored = {"holdout_accuracy": self.holdout_accuracy, "train_loss": self.train_loss,
                  "finetune_s": self.finetune_s, "evaluate_s": self.evaluate_s}
        if self.holdout_loss is not None:  # written only once kept: old checkpoints stay as they were
            scored["holdout_loss"] = self.holdout_loss
        return {**self.proposal.to_dict(), **scored}

    def to_state(self) -> dict:
        return {**self.to_dict(), "config": dict(self.proposal.config)}

    @classmethod
    def from_state(cls, data: Mapping) -> "ProposalResult":
        return cls(proposal=Proposal.from_state(data), holdout_accuracy=data["holdout_accuracy"],
                   train_loss=data["train_loss"], finetune_s=data["finetune_s"],
                   evaluate_s=data["evaluate_s"], holdout_loss=data.get("holdout_loss"))


@dataclass
class IterationPlan:
    """What one iteration will try."""

    iteration: int
    current: Estimate
    target: float
    proposals: list[Proposal]
    skipped: dict[str, str] = field(default_factory=dict)  # group -> why it has no proposal
    #: For each skipped group that can still shrink: the count whose estimate comes nearest the
    #: target (the smallest estimate; ties to more channels). The loop falls back to these when
    #: no group alone meets the target (``proposals`` empty).
    nearest: list[Proposal] = field(default_factory=list)
    #: The groups that had smaller counts to offer (below their current count, above any floor).
    shrinkable: tuple[str, ...] = ()


def candidate_counts(current: int, step: int) -> list[int]:
    """Channel counts a group may shrink to: multiples of ``step`` below ``current``, largest first."""
    return list(range((current - 1) // step * step, step - 1, -step))


def plan_configs(analysis: NetworkAnalysis, channels: Mapping[str, int], step: int,
                 floor: FloorRule | None = None) -> list[ChannelConfig]:
    """Every channel configuration the plan of an iteration may estimate (none below ``floor``)."""
    floors = floor.floors(analysis.original_config(), step) if floor else {}
    return [{**channels, group: count} for group in analysis.group_names
            for count in above_floor(candidate_counts(channels[group], step), floors.get(group, 0))]


def plan_signatures(analysis: NetworkAnalysis, channels: Mapping[str, int], step: int,
                    floor: FloorRule | None = None) -> list[LayerSignature]:
    """Every layer signature the plan of an iteration will look up (ask for them in one batch)."""
    wanted: dict[LayerSignature, None] = dict.fromkeys(analysis.signatures(channels))
    for config in plan_configs(analysis, channels, step, floor):
        wanted.update(dict.fromkeys(analysis.signatures(config)))
    return list(wanted)


def plan_iteration(analysis: NetworkAnalysis, channels: Mapping[str, int], resource: ResourceModel,
                   iteration: int, target: float, step: int, floor: FloorRule | None = None,
                   min_proposals: int = 0, pace: float | None = None) -> IterationPlan:
    """For every group, the largest channel count whose estimated resource meets ``target``.

    Every multiple of ``step`` is scanned: latency is not monotone in the channel count, so the
    first count below the target is not necessarily the largest one that meets it. ``floor``:
    no group goes below its floor (of the original network's channels, ``floors.FloorRule``).
    A group that cannot meet the target offers its nearest count instead (``IterationPlan.nearest``)
    when that still lowers the resource.

    ``min_proposals``: when fewer groups than this can meet ``target``, the iteration asks for a
    smaller cut, the largest that this many groups can each make (or every group that can shrink,
    if fewer can), so that selection has a choice; ``IterationPlan.target`` is the target used.
    0 keeps the schedule's target (the paper). ``pace``: the resource this iteration must reach
    for the budget to be met at an even pace over the iterations left
    (``schedule.pace_target``); the smaller cut is then never smaller than that, as far as one
    group can make it.
    """
    current = resource.estimate(analysis.signatures(channels))
    floors = floor.floors(analysis.original_config(), step) if floor else {}
    scans: list[_Scan] = []
    skipped: dict[str, str] = {}
    for index, group in enumerate(analysis.group_names):
        counts = above_floor(candidate_counts(channels[group], step), floors.get(group, 0))
        if not counts:
            skipped[group] = (f"already at its floor of {floors[group]} channels"
                              if floors.get(group, 0) > step else
                              f"already at the minimum of {step} channels")
            continue
        scans.append(_Scan(index, group, counts, analysis, channels, resource).until(target))
    if min_proposals and sum(scan.meets(target) for scan in scans) < min_proposals:
        target = enough_choice_target([scan.whole().lowest() for scan in scans], current.value,
                                      target, min_proposals, pace)
    proposals, nearest = [], []
    for scan in scans:
        chosen = scan.until(target).first_meeting(target)
        if chosen is not None:  # the largest count that meets the target
            proposals.append(_proposal(channels, scan.group, scan.index, *chosen))
            continue
        skipped[scan.group] = f"even {scan.counts[-1]} channels do not meet the target"
        closest = min(scan.scanned, key=lambda option: (option[2].value, -option[0]))
        if closest[2].value < current.value:  # smallest estimate, ties to more channels
            nearest.append(_proposal(channels, scan.group, scan.index, *closest))
    return IterationPlan(iteration, current, target, proposals, skipped, nearest,
                         tuple(scan.group for scan in scans))


class _Scan:
    """One group's candidate counts, estimated largest first and only as far as needed: up to
    the first that meets a target (or all of them)."""

    def __init__(self, index: int, group: str, counts: list[int], analysis: NetworkAnalysis,
                 channels: Mapping[str, int], resource: ResourceModel) -> None:
        self.index, self.group, self.counts = index, group, counts
        self._analysis, self._channels, self._resource = analysis, channels, resource
        self.scanned: list[tuple[int, list[LayerSignature], Estimate]] = []

    def _next(self) -> bool:
        if len(self.scanned) == len(self.counts):
            return False
        count = self.counts[len(self.scanned)]
        sigs = self._analysis.signatures({**self._channels, self.group: count})
        self.scanned.append((count, sigs, self._resource.estimate(sigs)))
        return True

    def until(self, target: float) -> "_Scan":
        while not self.meets(target) and self._next():
            pass
        return self

    def whole(self) -> "_Scan":
        while self._next():
            pass
        return self

    def meets(self, target: float) -> bool:
        return self.first_meeting(target) is not None

    def first_meeting(self, target: float):
        return next((option for option in self.scanned if option[2].value <= target), None)

    def lowest(self) -> float:
        return min(estimate.value for _, _, estimate in self.scanned)


def enough_choice_target(best: Sequence[float], current: float, target: float,
                         min_proposals: int, pace: float | None = None) -> float:
    """The target that lets at least ``min_proposals`` groups meet it, given each group's lowest
    reachable estimate ``best``: ``target`` itself when enough groups meet it already (or
    ``min_proposals`` is 0), else the ``min_proposals``-th lowest of ``best`` (counting only the
    groups that can lower the resource at all).

    ``pace`` (``schedule.pace_target``) bounds how much smaller the cut may get: where the
    choice would leave the budget out of reach at this pace, the target is the pace, or the best
    one group can reach if none reaches the pace; never more than ``target``'s cut (the
    schedule's)."""
    reachable = sorted(value for value in best if value < current)
    if not min_proposals or not reachable:
        return target
    needed = min(min_proposals, len(reachable))
    if sum(value <= target for value in reachable) >= needed:
        return target
    choice = reachable[needed - 1]
    if pace is not None:
        choice = min(choice, max(pace, reachable[0]))
    return max(target, choice)



def _proposal(channels: Mapping[str, int], group: str, index: int, count: int,
              sigs: Sequence[LayerSignature], estimate: Estimate) -> Proposal:
    """The proposal to shrink ``group`` to ``count`` (its counts are summed only once chosen)."""
    return Proposal(group=group, group_index=index, channels=count, config={**channels, group: count},
                    estimate=estimate, macs=sum(s.macs() for s in sigs), params=sum(s.params() for s in sigs))


def proposal_seed(seed: int, iteration: int, group_index: int) -> int:
    """Seed of one proposal's fine-tune: depends on nothing else, so runs resume identically."""
    return (seed * 1_000_003 + iteration * 10_007 + group_index) % (2 ** 31)


def evaluate_proposal(model: nn.Module, example_input: torch.Tensor, proposal: Proposal,
                      data: DatasetSplits, config: AdaptConfig, iteration: int,
                      hook: TrainingHook | None = None, device: DeviceLike = "cpu",
                      loss_fn: TrainingLoss | None = None) -> tuple[ProposalResult, nn.Module]:
    """Prune a copy of ``model`` (L2 selection), short-term fine-tune it (``hook``: see
    ``training.TrainingHook``; ``loss_fn``: ``distillation.fine_tune_loss`` of the run, needed
    when ``config`` distils), re-estimate its batch-norm statistics (when ``config`` asks),
    score it on the holdout; training and scoring run on ``device``, the returned candidate is
    on the CPU."""
    start = time.perf_counter()
    require_loss(config, loss_fn)
    candidate = pruned_copy(model, example_input, {proposal.group: proposal.channels})
    loss = train_steps(candidate, data.train, config.short_term_steps, lr=config.short_term_lr,
                       batch_size=config.batch_size, momentum=config.momentum,
                       weight_decay=config.weight_decay,
                       seed=proposal_seed(config.seed, iteration, proposal.group_index), hook=hook,
                       device=device, loss_fn=loss_fn)
    recalibrate_for_scoring(candidate, data.train, batches=config.bn_recalibration_batches,
                            batch_size=config.batch_size, seed=config.seed, device=device)
    finetuned = time.perf_counter()
    holdout, holdout_loss = scores(candidate, data.holdout, device=device)
    result = ProposalResult(proposal=proposal, holdout_accuracy=holdout, train_loss=loss,
                            finetune_s=finetuned - start, evaluate_s=time.perf_counter() - finetuned,
                            holdout_loss=holdout_loss)
    return result, candidate


def require_loss(config: AdaptConfig, loss_fn: TrainingLoss | None) -> None:
    """A run that distils must be given its distillation loss: without the original network a
    fine-tune would silently train on labels alone."""
    if config.distillation_alpha and loss_fn is None:
        raise ValueError("the configuration distils from the original network "
                         f"(distillation_alpha={config.distillation_alpha:g}) but the fine-tune "
                         "was given no loss: pass distillation.fine_tune_loss(config, original)")


def select_proposal(results: Sequence[ProposalResult], rule: str, previous_accuracy: float,
                    previous_resource: float) -> int:
    """Index of the proposal to keep.

    ``accuracy``: the best holdout accuracy (the paper), ties to the smaller resource.
    ``holdout_loss``: the least holdout cross-entropy, ties to the smaller resource: a
    continuous score, so proposals a few images apart in top-1 are still told apart.
    ``loss_per_resource``: the least accuracy lost per unit of resource saved (the official code).
    """
    if not results:
        raise NoProposalError("there are no proposals to select from")
    if rule == "accuracy":
        key = [(-r.holdout_accuracy, r.proposal.estimate.value) for r in results]
    elif rule == "holdout_loss":
        if any(r.holdout_loss is None for r in results):
            raise ValueError("a proposal has no holdout loss (scored before it was kept)")
        key = [(r.holdout_loss, r.proposal.estimate.value) for r in results]
    elif rule == "loss_per_resource":
        key = [((previous_accuracy - r.holdout_accuracy)
                / max(previous_resource - r.proposal.estimate.value, 1e-12),
                r.proposal.estimate.value) for r in results]
    else:
        raise ValueError(f"unknown selection rule '{rule}'")
    return min(range(len(results)), key=key.__getitem__)
