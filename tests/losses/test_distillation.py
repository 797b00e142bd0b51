"""Distillation loss: zero for identical logits, the T^2-scaled KL on known values, and the weights."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.losses import DistillationLoss, build_loss, kd_kl


@pytest.mark.parametrize("sigmoid", [False, True])
def test_kd_is_zero_when_student_equals_teacher(sigmoid):
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for temperature in (1.0, 4.0):
        assert abs(float(kd_kl(logits, logits.clone(), temperature, sigmoid))) < 1e-6


def test_kd_softmax_known_value_and_temperature_scaling():
    student = torch.tensor([0.0, 0.0]).view(1, 2, 1, 1)
    teacher = torch.tensor([2.0, 0.0]).view(1, 2, 1, 1)
    for t in (1.0, 2.0, 5.0):
        p = [math.exp(2 / t) / (math.exp(2 / t) + 1), 1 / (math.exp(2 / t) + 1)]
        expected = t * t * sum(pi * math.log(pi / 0.5) for pi in p)
        assert math.isclose(float(kd_kl(student, teacher, t)), expected, rel_tol=1e-5)


def test_kd_sigmoid_known_value():
    student, teacher = torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0)
    t = 2.0
    p = 1 / (1 + math.exp(-2 / t))
    expected = t * t * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert math.isclose(float(kd_kl(student, teacher, t, sigmoid=True)), expected, rel_tol=1e-5)


def test_kd_gradient_flows_to_the_student_only():
    student = torch.randn(1, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(1, 3, 4, 4, requires_grad=True)
    kd_kl(student, teacher, 2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_distillation_loss_weights_and_input_forms():
    task = build_loss("dice_ce")
    loss = DistillationLoss(task, temperature=3.0, alpha_kd=0.7, alpha_task=0.3)
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (2, 1, 8, 8), generator=g).float()
    expected = 0.7 * float(kd_kl(s, t, 3.0)) + 0.3 * float(task(s, y))
    assert math.isclose(float(loss(s, y, t)), expected, rel_tol=1e-5)
    assert math.isclose(float(loss((s, t), y)), expected, rel_tol=1e-5)  # TeacherStudent's pair
    assert math.isclose(float(loss((s, s), y)), 0.3 * float(task(s, y)), rel_tol=1e-5)


def test_distillation_loss_checks():
    task = build_loss("dice_ce")
    with pytest.raises(ValueError, match="`temperature` must be > 0, got 0"):
        DistillationLoss(task, temperature=0)
    with pytest.raises(ValueError, match="not both 0"):
        DistillationLoss(task, alpha_kd=0, alpha_task=0)
    with pytest.raises(ValueError, match="needs teacher logits"):
        DistillationLoss(task)(torch.randn(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        kd_kl(torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 4), 1.0)
