"""Knowledge distillation from the original network during fine-tunes (Hinton et al. 2015).

Beyond the NetAdapt paper, which fine-tunes on labels alone. A pruned network recovers faster
when it also matches the original's softened class probabilities: they carry how the original
ranks the wrong classes, which hard labels do not. The teacher never learns: it runs in
evaluation mode without gradients, and only the student's parameters receive any.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .training import TrainingLoss


class DistillationLoss:
    """``(1 - alpha) * CE(student, targets) + alpha * T² * KL(teacher_T || student_T)``.

    ``student_T`` and ``teacher_T`` are the softmaxes at ``temperature`` T; the KL term is
    averaged over the batch and scaled by T² so its gradients keep the size of the
    cross-entropy's whatever T is (Hinton et al., section 2). ``alpha`` = 0 is plain
    cross-entropy, 1 is distillation alone. The teacher is a frozen copy of ``teacher``, in
    evaluation mode, moved to the inputs' device on first use.
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.5) -> None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        # A private frozen copy: freezing the caller's network would freeze every pruned copy
        # later made of it, and moving it to a training device would move theirs.
        self.teacher = copy.deepcopy(teacher).eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``inputs`` (evaluation mode, no graph)."""
        first = next(self.teacher.parameters(), None)
        if first is not None and first.device != inputs.device:
            self.teacher.to(inputs.device)
        self.teacher.eval()
        with torch.no_grad():
            return self.teacher(inputs)

    def kl_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """T² · KL(teacher_T || student_T), averaged over the batch."""
        t = self.temperature
        return F.kl_div(F.log_softmax(student_logits / t, dim=1),
                        F.log_softmax(teacher_logits / t, dim=1),
                        reduction="batchmean", log_target=True) * (t * t)

    def __call__(self, student_logits: torch.Tensor, inputs: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0:
            return F.cross_entropy(student_logits, targets)  # the teacher is not even run
        soft = self.kl_term(student_logits, self.teacher_logits(inputs))
        if self.alpha == 1:
            return soft
        return (1 - self.alpha) * F.cross_entropy(student_logits, targets) + self.alpha * soft


def cross_entropy_loss(student_logits: torch.Tensor, inputs: torch.Tensor,
                       targets: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy in the ``TrainingLoss`` signature: what fine-tunes use today."""
    return F.cross_entropy(student_logits, targets)


def fine_tune_loss(config, teacher: nn.Module) -> TrainingLoss | None:
    """What the fine-tunes of a run under ``config`` (an ``AdaptConfig``) minimise: None (plain
    cross-entropy) when its ``distillation_alpha`` is 0, else one ``DistillationLoss`` from
    ``teacher`` (the original network) to share between all of the run's fine-tunes."""
    if not config.distillation_alpha:
        return None
    return DistillationLoss(teacher, config.distillation_temperature, config.distillation_alpha)
