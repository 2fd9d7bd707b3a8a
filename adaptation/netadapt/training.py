"""Fine-tuning and evaluation on in-memory datasets (plain SGD with momentum, CPU friendly).

Both run on an explicit training device (``resolve_device``): the datasets stay in CPU memory and
move one batch at a time; the model moves there for the call and comes back to the CPU afterwards,
so pruning, export, measurement and checkpoints only ever see CPU tensors. Latency is never
measured on the training device.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import TensorSplit, iterate_batches

#: What a fine-tune minimises: ``loss(logits, inputs, targets) -> scalar tensor`` (plain
#: cross-entropy by default; ``distillation.DistillationLoss`` adds the original's soft targets).
TrainingLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _endless_batches(split: TensorSplit, batch_size: int, generator: torch.Generator
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from iterate_batches(split, batch_size, shuffle=True, generator=generator)


#: The training devices a user may ask for: "auto" is CUDA when torch sees a GPU, else the CPU.
TRAIN_DEVICES = ("auto", "cpu", "cuda")

#: What a device argument may be: one of ``TRAIN_DEVICES`` or an already resolved device.
DeviceLike = str | torch.device


def resolve_device(name: DeviceLike = "auto") -> torch.device:
    """The ``torch.device`` of a training device ``name`` (see ``TRAIN_DEVICES``).

    Raises ``ValueError`` with a clear message for an unknown name or for "cuda" on a machine
    where torch sees no GPU, instead of failing later inside a fine-tune.
    """
    if isinstance(name, torch.device):
        name = name.type
    if name not in TRAIN_DEVICES:
        raise ValueError(f"unknown training device '{name}': choose one of {', '.join(TRAIN_DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("training device 'cuda' was asked for but torch sees no CUDA GPU on this "
                         "machine; use 'auto' or 'cpu'")
    return torch.device(name)


#: Steps between two calls of a training hook: a cancel stops a fine-tune within this many steps.
HOOK_EVERY = 25

#: The one hook of every fine-tune: ``hook(steps_done, steps_in_all)``, called before the first
#: step, then every ``HOOK_EVERY`` steps, and once after the last (``steps_done == steps_in_all``:
#: the fine-tune is done, e.g. to let go of the host lock). It may raise (``Cancelled``: the result is no longer
#: wanted) or block (e.g. to leave the machine to a latency measurement); it must not touch the model.
TrainingHook = Callable[[int, int], None]


class Cancelled(Exception):
    """Raised by a training hook to stop a fine-tune whose result is no longer wanted.

    ``steps_done``/``steps_total``: where the fine-tune stopped (set by ``train_steps`` when the
    hook raised it there; None when raised elsewhere).
    """

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)
        self.steps_done: int | None = None
        self.steps_total: int | None = None

    def where(self) -> str:
        """``"after 25 of 20,000 fine-tune steps"``, or "" when not stopped in a fine-tune."""
        if self.steps_done is None:
            return ""
        return f"after {self.steps_done:,} of {self.steps_total:,} fine-tune steps"


def train_steps(model: nn.Module, split: TensorSplit, steps: int, *, lr: float, batch_size: int,
                seed: int, momentum: float = 0.9, weight_decay: float = 4e-5,
                cosine: bool = False, on_step: Callable[[int, float], None] | None = None,
                hook: TrainingHook | None = None, device: DeviceLike = "cpu",
                loss_fn: TrainingLoss | None = None) -> float:
    """Run ``steps`` SGD steps on ``split``; returns the mean loss of the last 10% of steps.

    ``loss_fn`` (see ``TrainingLoss``) is what the steps minimise; None is plain cross-entropy.

    Shuffling and dropout are seeded by ``seed`` alone, so the same call gives the same weights
    (on the CPU; CUDA kernels are not bitwise deterministic). ``hook`` (see ``TrainingHook``) is
    called every ``HOOK_EVERY`` steps; a ``Cancelled`` it raises leaves here with ``steps_done``
    set. The steps run on ``device`` (see ``resolve_device``); ``model`` is back on the CPU when
    this returns or raises.
    """
    if steps <= 0:
        return float("nan")
    target = resolve_device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(target)
    try:
        return _train(model, split, steps, target, generator, lr=lr, batch_size=batch_size,
                      momentum=momentum, weight_decay=weight_decay, cosine=cosine,
                      on_step=on_step, hook=hook, loss_fn=loss_fn)
    finally:
        model.to("cpu")


def _train(model: nn.Module, split: TensorSplit, steps: int, device: torch.device,
           generator: torch.Generator, *, lr: float, batch_size: int, momentum: float,
           weight_decay: float, cosine: bool, on_step: Callable[[int, float], None] | None,
           hook: TrainingHook | None, loss_fn: TrainingLoss | None = None) -> float:
    """The loop of ``train_steps`` with ``model`` already on ``device``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay, nesterov=momentum > 0)
    model.train()
    tail = max(1, steps // 10)
    tail_losses: list[float] = []
    batches = _endless_batches(split, batch_size, generator)
    for step in range(steps):
        if hook is not None and step % HOOK_EVERY == 0:
            try:
                hook(step, steps)
            except Cancelled as stop:
                stop.steps_done, stop.steps_total = step, steps
                model.eval()
                raise
        if cosine:
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / steps))
        images, labels = next(batches)
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss = (F.cross_entropy(logits, labels) if loss_fn is None
                else loss_fn(logits, images, labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged at step {step} (loss {value}); lower the learning rate")
        if step >= steps - tail:
            tail_losses.append(value)
        if on_step is not None:
            on_step(step, value)
    model.eval()
    if hook is not None:
        hook(steps, steps)
    return sum(tail_losses) / len(tail_losses)


def steps_for_epochs(split: TensorSplit, epochs: float, batch_size: int) -> int:
    return int(round(epochs * math.ceil(len(split) / batch_size)))


#: Evaluation batch sizes. On a CPU a batch's activations must stay near the caches: 2,000
#: 32-px MobileNetV2 images took a third of the time in batches of 64 that they took in batches
#: of 1,000 (bench/eval_batch.py); a GPU wants large batches.
CPU_EVAL_BATCH = 64
GPU_EVAL_BATCH = 1000


def accuracy(model: nn.Module, split: TensorSplit, batch_size: int | None = None,
             device: DeviceLike = "cpu") -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``split``: see :func:`scores`."""
    return scores(model, split, batch_size, device)[0]


def scores(model: nn.Module, split: TensorSplit, batch_size: int | None = None,
           device: DeviceLike = "cpu") -> tuple[float, float]:
    """Top-1 accuracy (fraction) and mean cross-entropy of ``model`` on ``split``, computed in
    one pass on ``device`` in batches of ``batch_size`` (default: by device, see
    ``CPU_EVAL_BATCH``); ``model`` is back on the CPU afterwards.

    The model moves outside inference mode: moved there, its parameters would become inference
    tensors that a later fine-tune cannot train.
    """
    target = resolve_device(device)
    batch_size = batch_size or (CPU_EVAL_BATCH if target.type == "cpu" else GPU_EVAL_BATCH)
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    model.to(target)
    try:
        with torch.inference_mode():
            for images, labels in iterate_batches(split, batch_size, shuffle=False):
                logits = model(images.to(target))
                labels = labels.to(target)
                correct += (logits.argmax(dim=1) == labels).sum().item()
                loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
    finally:
        model.to("cpu")
        model.train(was_training)
    count = max(1, len(split))
    return correct / count, loss / count
