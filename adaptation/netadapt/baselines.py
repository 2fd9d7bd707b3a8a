"""Baselines for the trade-off chart, given the same fine-tune budget as NetAdapt.

- Uniform width multiplier: every group keeps the same fraction of its channels (rounded to the
  channel step), chosen by L2 norm like NetAdapt's proposals. This is what shrinking a
  MobileNet's width multiplier does, without retraining from scratch.
- The same recipe as NetAdapt's: distillation from the original and batch-norm re-estimation
  when the configuration asks for them, so only how the channels are chosen differs.
- NetAdapt driven by MACs instead of latency: the same loop with ``MacsModel`` (see the CLI and
  ``bench/tradeoff.py``).
- A global allocation (``allocation``, after HALP): every group's count chosen at once from the
  look-up table's latency deltas and the channels' L2 importance, then the multipliers' fine-tune.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn as nn

from .bn_recalibration import recalibrate_for_scoring
from .config import AdaptConfig
from .data import DatasetSplits
from .distillation import fine_tune_loss
from .allocation import LatencyOf, allocate_checked, group_options
from .graph import ChannelConfig, GroupPruner, NetworkAnalysis, pruned_copy
from .loop import long_term_finetune
from .training import DeviceLike, TrainingHook, accuracy, train_steps


def uniform_channels(channels: Mapping[str, int], ratio: float, step: int) -> ChannelConfig:
    """Every group scaled by ``ratio``, rounded to the nearest multiple of ``step`` (at least one
    step, at most the group's channels)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"a width ratio must be in (0, 1], got {ratio}")
    return {name: min(count, max(step, int(round(count * ratio / step)) * step))
            for name, count in channels.items()}


@dataclass
class BaselineResult:
    label: str
    ratio: float
    channels: ChannelConfig
    macs: int
    params: int
    holdout_accuracy: float
    validation_accuracy: float
    finetune_s: float
    model: nn.Module

    def to_dict(self) -> dict:
        return {"label": self.label, "ratio": self.ratio, "channels": dict(self.channels),
                "macs": self.macs, "params": self.params,
                "holdout_accuracy": self.holdout_accuracy,
                "validation_accuracy": self.validation_accuracy, "finetune_s": self.finetune_s}


def uniform_baseline(model: nn.Module, example_input: torch.Tensor, analysis: NetworkAnalysis,
                     data: DatasetSplits, config: AdaptConfig, ratio: float,
                     short_term_steps_total: int, hook: TrainingHook | None = None,
                     device: DeviceLike = "cpu") -> BaselineResult:
    """Shrink every group by ``ratio`` and fine-tune it as long as NetAdapt's chosen lineage was:
    ``short_term_steps_total`` steps at the short-term rate, then the long-term fine-tune
    (``hook``: see ``training.TrainingHook``), on ``device``; the result's model is on the CPU.
    The fine-tunes distil from ``model`` and batch-norm statistics are re-estimated after them
    when ``config`` asks, as NetAdapt's are."""
    channels = uniform_channels(analysis.original_config(), ratio, config.channel_step)
    return finetuned_baseline(model, example_input, analysis, data, config, channels,
                              f"uniform x{ratio:g}", ratio, short_term_steps_total, hook, device)


def allocation_baseline(model: nn.Module, example_input: torch.Tensor, analysis: NetworkAnalysis,
                        data: DatasetSplits, config: AdaptConfig, latency_of: LatencyOf,
                        fraction: float, short_term_steps_total: int,
                        hook: TrainingHook | None = None, device: DeviceLike = "cpu"
                        ) -> BaselineResult:
    """Every group's count chosen at once by the global allocation (``allocation``, after HALP):
    the most L2 importance kept with ``latency_of`` (e.g. the look-up table's estimate) at most
    ``fraction`` of the original's; then the multipliers' fine-tune, so only how the channels
    are chosen differs."""
    original = analysis.original_config()
    pruner = GroupPruner(model, example_input)
    importance = {name: pruner.importance(name).tolist() for name in original}
    floor = config.floor_rule()
    floors = floor.floors(original, config.channel_step) if floor else None
    base, options = group_options(original, importance, latency_of, config.channel_step, floors)
    chosen = allocate_checked(options, fraction * base, latency_of, base=base)
    return finetuned_baseline(model, example_input, analysis, data, config, chosen.counts,
                              f"allocation {fraction:g}", fraction, short_term_steps_total, hook,
                              device)


def finetuned_baseline(model: nn.Module, example_input: torch.Tensor, analysis: NetworkAnalysis,
                       data: DatasetSplits, config: AdaptConfig, channels: Mapping[str, int],
                       label: str, ratio: float, short_term_steps_total: int,
                       hook: TrainingHook | None = None, device: DeviceLike = "cpu"
                       ) -> BaselineResult:
    """``model`` pruned to ``channels`` (L2) and fine-tuned with the baselines' one recipe."""
    start = time.perf_counter()
    loss_fn = fine_tune_loss(config, model)
    pruned = pruned_copy(model, example_input, dict(channels))
    train_steps(pruned, data.train, short_term_steps_total, lr=config.short_term_lr,
                batch_size=config.batch_size, momentum=config.momentum,
                weight_decay=config.weight_decay, seed=config.seed + 104729, hook=hook,
                device=device, loss_fn=loss_fn)
    recalibrate_for_scoring(pruned, data.train, batches=config.bn_recalibration_batches,
                            batch_size=config.batch_size, seed=config.seed, device=device)
    if config.long_term_epochs:
        long_term_finetune(pruned, data, config, hook, device, loss_fn)
    signatures = analysis.signatures(channels)
    return BaselineResult(label, ratio, dict(channels),
                          sum(s.macs() for s in signatures), sum(s.params() for s in signatures),
                          accuracy(pruned, data.holdout, device=device),
                          accuracy(pruned, data.validation, device=device),
                          time.perf_counter() - start, pruned)
