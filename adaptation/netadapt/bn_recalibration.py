"""Batch-norm statistics re-estimated on a few training batches (EagleEye, Li et al. ECCV 2020).

Pruning a group removes channels that fed the next layers, so the running means and variances of
every batch norm downstream describe activations the pruned network no longer produces. Scoring
a proposal with those stale statistics ranks the damage to the statistics as much as the damage
to the network. EagleEye's "adaptive batch norm" re-estimates them on a few training batches
before scoring: a forward pass only, no weight changes, so it costs far less than a fine-tune.
"""
from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from .data import TensorSplit, iterate_batches
from .training import DeviceLike, resolve_device

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, _BATCH_NORMS) and m.track_running_stats]


def recalibrate_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor], *,
                           max_batches: int) -> int:
    """Replace the running statistics of every batch norm of ``model`` by the cumulative average
    over at most ``max_batches`` of ``batches`` (input tensors); returns the batches used.

    Only the batch norms are put in training mode, so dropout and any other mode-dependent layer
    behave as in evaluation and do not perturb the statistics. Cumulative averaging
    (``momentum=None``) weights every batch equally, unlike the exponential average of training,
    which would remember mostly the last batches. Each module's momentum and every module's
    train/eval mode are restored afterwards; weights and biases are not touched. Batches move to
    the device of the model's parameters. With no batch at all the statistics are left as they
    were (a network with no data to estimate from keeps what it has).
    """
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise ValueError(f"max_batches must be an integer >= 1, got {max_batches!r}")
    norms = batch_norms(model)
    if not norms:
        return 0
    device = next(model.parameters()).device
    modes = {module: module.training for module in model.modules()}
    momenta = {norm: norm.momentum for norm in norms}
    saved = [(norm.running_mean.clone(), norm.running_var.clone(),
              norm.num_batches_tracked.clone()) for norm in norms]
    used = 0
    try:
        model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        with torch.no_grad():
            for inputs in islice(batches, max_batches):
                model(inputs.to(device))
                used += 1
    except BaseException:
        _restore(norms, saved)  # half-estimated statistics are worse than the old ones
        raise
    else:
        if used == 0:
            _restore(norms, saved)
    finally:
        for norm, momentum in momenta.items():
            norm.momentum = momentum
        for module, training in modes.items():
            module.training = training
    return used


def _restore(norms, saved) -> None:
    for norm, (mean, var, count) in zip(norms, saved):
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        norm.num_batches_tracked.copy_(count)


def training_inputs(split: TensorSplit, batch_size: int, *, seed: int) -> Iterator[torch.Tensor]:
    """Shuffled input batches of ``split`` (seeded, labels dropped): what ``recalibrate_batch_norm``
    reads, drawn the same way for every proposal of a run so that their scores compare."""
    generator = torch.Generator().manual_seed(seed)
    for images, _ in iterate_batches(split, batch_size, shuffle=True, generator=generator):
        yield images


def recalibrate_for_scoring(model: nn.Module, split: TensorSplit, *, batches: int, batch_size: int,
                            seed: int, device: DeviceLike = "cpu") -> int:
    """``recalibrate_batch_norm`` on ``batches`` batches of ``split`` drawn with ``seed``, run on
    ``device`` (``model`` is back on the CPU afterwards); 0 batches does nothing. What a run does
    after each fine-tune, before scoring or keeping the network."""
    if batches <= 0:
        return 0
    model.to(resolve_device(device))
    try:
        return recalibrate_batch_norm(model, training_inputs(split, batch_size, seed=seed),
                                      max_batches=batches)
    finally:
        model.to("cpu")
