"""Knowledge distillation loss: temperature-scaled KL to a teacher's logits plus the task loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import InvalidValueError

__all__ = ["DistillationLoss", "kd_kl"]


def kd_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, sigmoid: bool = False
) -> torch.Tensor:
    """Temperature-scaled KL divergence from the teacher's to the student's distribution, times ``T^2``.

    Hinton et al., "Distilling the Knowledge in a Neural Network", arXiv:1503.02531, 2015.
    With softmax: ``T^2 * mean_voxels( sum_c p_t log(p_t / p_s) )`` with
    ``p = softmax(logits / T)`` over channels. With sigmoid (independent regions): the
    Bernoulli KL per channel, ``T^2 * mean( p_t log(p_t/p_s) + (1-p_t) log((1-p_t)/(1-p_s)) )``
    with ``p = sigmoid(logits / T)``. The ``T^2`` keeps gradient magnitudes comparable across T.

    Args:
        student: student logits ``(B, C, *S)``.
        teacher: teacher logits, same shape (no gradient flows into them).
        temperature: ``T > 0``.
        sigmoid: per-channel sigmoid (region outputs) instead of softmax.

    Returns:
        A scalar, 0 when ``student == teacher``.
    """
    if student.shape != teacher.shape:
        raise InvalidValueError(
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} logits differ in shape"
        )
    t = float(temperature)
    teacher = teacher.detach()
    if sigmoid:
        s_log_p, s_log_q = F.logsigmoid(student / t), F.logsigmoid(-student / t)
        t_log_p, t_log_q = F.logsigmoid(teacher / t), F.logsigmoid(-teacher / t)
        kl = t_log_p.exp() * (t_log_p - s_log_p) + t_log_q.exp() * (t_log_q - s_log_q)
        return kl.mean() * t * t
    s_log = F.log_softmax(student / t, dim=1)
    t_log = F.log_softmax(teacher / t, dim=1)
    kl = (t_log.exp() * (t_log - s_log)).sum(dim=1)
    return kl.mean() * t * t


class DistillationLoss(nn.Module):
    """``alpha_kd * KD(student, teacher; T) + alpha_task * task_loss(student, target)``.

    Hinton et al. 2015, applied per voxel as in Liu et al., "Structured Knowledge
    Distillation for Semantic Segmentation", CVPR 2019. The teacher logits come either as
    the third argument or, with :class:`medseg.transfer.TeacherStudent` in training mode,
    as the second item of the ``(student, teacher)`` pair the network returns, which lets
    MONAI's ``SupervisedTrainer`` call ``loss(pred, label)`` unchanged.

    Args:
        task_loss: the supervised loss, e.g. ``build_loss("dice_focal")``.
        temperature: softening temperature ``T > 0``. Defaults to 2.
        alpha_kd: weight of the distillation term, >= 0. Defaults to 0.5.
        alpha_task: weight of the task term, >= 0. Defaults to 0.5.
        sigmoid: use per-channel sigmoid KL (region outputs). Defaults to False (softmax).
    """

    def __init__(
        self,
        task_loss: nn.Module,
        temperature: float = 2.0,
        alpha_kd: float = 0.5,
        alpha_task: float = 0.5,
        sigmoid: bool = False,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise InvalidValueError(f"`temperature` must be > 0, got {temperature}")
        if alpha_kd < 0 or alpha_task < 0 or alpha_kd + alpha_task == 0:
            raise InvalidValueError(
                f"`alpha_kd` and `alpha_task` must be >= 0 and not both 0, got alpha_kd={alpha_kd}, "
                f"alpha_task={alpha_task}"
            )
        self.task_loss = task_loss
        self.temperature = float(temperature)
        self.alpha_kd = float(alpha_kd)
        self.alpha_task = float(alpha_task)
        self.sigmoid = sigmoid

    def forward(
        self,
        input: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the weighted sum of the distillation and task losses.

        Args:
            input: student logits ``(B, C, *S)``, or a ``(student, teacher)`` pair.
            target: the label for the task loss.
            teacher_logits: teacher logits ``(B, C, *S)`` when ``input`` is not a pair.
        """
        if isinstance(input, (list, tuple)):
            if len(input) != 2 or teacher_logits is not None:
                raise InvalidValueError(
                    "pass either a (student, teacher) pair as `input` or student logits plus "
                    f"`teacher_logits`, got a sequence of {len(input)} and "
                    f"teacher_logits={'set' if teacher_logits is not None else None}"
                )
            input, teacher_logits = input
        if teacher_logits is None:
            raise InvalidValueError(
                "DistillationLoss needs teacher logits: wrap the student in TeacherStudent or pass them"
            )
        kd = kd_kl(input, teacher_logits, self.temperature, self.sigmoid)
        return self.alpha_kd * kd + self.alpha_task * self.task_loss(input, target)
