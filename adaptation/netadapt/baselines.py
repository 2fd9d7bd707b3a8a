"""Baselines for the trade-off chart, given the same fine-tune budget as NetAdapt.

- Uniform width multiplier: every group keeps the same fraction of its channels (rounded to the
  channel step), chosen by L2 norm like NetAdapt's proposals. This is what shrinking a
  MobileNet's width multiplier does, without retraining from scratch.
- The same recipe as NetAdapt's: distillation from the original and batch-norm re-estimation
  when the configuration asks for them, so only how the channels are chosen differs.
- NetAdapt driven by MACs instead of latency: the same loop with ``MacsModel`` (see the CLI and
  ``bench/tradeoff.py``).
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
from .graph import ChannelConfig, NetworkAnalysis, pruned_copy
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
    start = time.perf_counter()
    loss_fn = fine_tune_loss(config, model)
    channels = uniform_channels(analysis.original_config(), ratio, config.channel_step)
    pruned = pruned_copy(model, example_input, channels)
    train_steps(pruned, data.train, short_term_steps_total, lr=config.short_term_lr,
                batch_size=config.batch_size, momentum=config.momentum,
                weight_decay=config.weight_decay, seed=config.seed + 104729, hook=hook,
                device=device, loss_fn=loss_fn)
    recalibrate_for_scoring(pruned, data.train, batches=config.bn_recalibration_batches,
                            batch_size=config.batch_size, seed=config.seed, device=device)
    if config.long_term_epochs:
        long_term_finetune(pruned, data, config, hook, device, loss_fn)
    signatures = analysis.signatures(channels)
    return BaselineResult(f"uniform x{ratio:g}", ratio, channels,
                          sum(s.macs() for s in signatures), sum(s.params() for s in signatures),
                          accuracy(pruned, data.holdout, device=device),
                          accuracy(pruned, data.validation, device=device),
                          time.perf_counter() - start, pruned)
