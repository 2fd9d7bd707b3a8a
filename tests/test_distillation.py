"""Knowledge distillation from the original network (Hinton et al. 2015) as a fine-tune loss."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from adaptation.netadapt.distillation import DistillationLoss, cross_entropy_loss
from adaptation.netadapt.graph import pruned_copy
from adaptation.netadapt.models import build_model, example_input


def nets():
    torch.manual_seed(0)
    teacher = build_model("plain_cnn", 10, in_channels=1, width=0.25, resolution=12)
    student = pruned_copy(teacher, example_input(1, 12), {"features.2.0": 8})
    with torch.no_grad():  # make the student disagree with the teacher
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    inputs = torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    return teacher, student, inputs, targets


def by_hand_kl(student_logits, teacher_logits, t):
    p = F.softmax(teacher_logits / t, dim=1)
    return (p * (p.log() - F.log_softmax(student_logits / t, dim=1))).sum(1).mean() * t * t


def test_alpha_zero_is_cross_entropy_and_alpha_one_the_scaled_kl():
    teacher, student, inputs, targets = nets()
    logits = student(inputs)
    assert DistillationLoss(teacher, 3.0, 0.0)(logits, inputs, targets).item() == \
        pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    assert cross_entropy_loss(logits, inputs, targets).item() == \
        pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    with torch.no_grad():
        teacher_logits = teacher.eval()(inputs)
    kl = by_hand_kl(logits, teacher_logits, 3.0).item()
    assert kl > 0.01
    assert DistillationLoss(teacher, 3.0, 1.0)(logits, inputs, targets).item() == \
        pytest.approx(kl, rel=1e-5)
    mixed = DistillationLoss(teacher, 3.0, 0.3)(logits, inputs, targets).item()
    assert mixed == pytest.approx(0.7 * F.cross_entropy(logits, targets).item() + 0.3 * kl, rel=1e-5)


def test_a_student_equal_to_its_teacher_has_no_kl():
    teacher, _, inputs, targets = nets()
    student = copy.deepcopy(teacher).train()
    logits = student.eval()(inputs)
    assert DistillationLoss(teacher, 4.0, 1.0)(logits, inputs, targets).item() == \
        pytest.approx(0.0, abs=1e-6)
    assert DistillationLoss(teacher, 4.0, 0.5)(logits, inputs, targets).item() == \
        pytest.approx(0.5 * F.cross_entropy(logits, targets).item(), rel=1e-5)


def test_gradients_reach_only_the_student():
    teacher, student, inputs, targets = nets()
    teacher.train()  # the loss must use it in evaluation mode anyway
    loss_fn = DistillationLoss(teacher, 4.0, 0.7)
    loss = loss_fn(student.train()(inputs), inputs, targets)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in loss_fn.teacher.parameters())
    # the caller's network is neither frozen nor touched (pruned copies of it must still train)
    assert all(p.grad is None and p.requires_grad for p in teacher.parameters())
    assert teacher.training and not loss_fn.teacher.training


def test_the_teacher_runs_in_evaluation_mode():
    teacher = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(4, 3)).train()
    loss_fn = DistillationLoss(teacher, 2.0, 1.0)
    inputs = torch.randn(5, 4)
    assert torch.equal(loss_fn.teacher_logits(inputs), loss_fn.teacher_logits(inputs))


def test_a_short_distilled_fine_tune_moves_the_student_towards_the_teacher():
    teacher, student, inputs, targets = nets()
    loss_fn = DistillationLoss(teacher, 4.0, 1.0)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    student.train()
    first = None
    for _ in range(30):
        loss = loss_fn(student(inputs), inputs, targets)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last = loss_fn(student(inputs), inputs, targets).item()
    assert last < 0.5 * first


@pytest.mark.parametrize("temperature, alpha", [(0, 0.5), (-1, 0.5), (float("nan"), 0.5),
                                                (float("inf"), 0.5), (2, -0.1), (2, 1.5),
                                                (True, 0.5), (2, "0.5")])
def test_bad_settings_are_refused(temperature, alpha):
    with pytest.raises(ValueError):
        DistillationLoss(nn.Linear(2, 2), temperature, alpha)
