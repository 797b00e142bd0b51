"""A student network paired with a frozen teacher loaded from a medseg checkpoint, for distillation."""

from __future__ import annotations

import os

import torch
from torch import nn

from medseg.checkpoint import build_from_checkpoint
from medseg.errors import InvalidValueError

__all__ = ["TeacherStudent"]


class TeacherStudent(nn.Module):
    """Run a frozen teacher beside the student during training (Hinton et al., arXiv:1503.02531, 2015).

    In training mode ``forward`` returns ``(student_logits, teacher_logits)``, which
    :class:`medseg.losses.DistillationLoss` unpacks, so MONAI's ``SupervisedTrainer`` needs no
    change. In eval mode it returns the student's logits only, so validation, inference and
    export see the student alone. The teacher stays in eval mode, without gradients.
    Save ``model.student`` (not this wrapper) as the trained network.

    Args:
        student: the network being trained.
        teacher: the trained network; its output must have the student's shape.

    Shapes:
        ``(B, C_in, *S)`` -> ``(B, C_out, *S)`` logits (a pair of them in training).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    @classmethod
    def from_checkpoint(
        cls, student: nn.Module, teacher_checkpoint: str | os.PathLike[str]
    ) -> TeacherStudent:
        """Pair ``student`` with the teacher rebuilt from a self-describing medseg checkpoint."""
        return cls(student, build_from_checkpoint(teacher_checkpoint))

    def train(self, mode: bool = True) -> TeacherStudent:
        """Set the student's mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Student logits, plus the teacher's in training mode."""
        student = self.student(x)
        if not self.training:
            return student
        with torch.no_grad():
            teacher = self.teacher(x)
        if isinstance(student, (list, tuple)) or isinstance(teacher, (list, tuple)):
            raise InvalidValueError("distillation needs single-tensor outputs; switch deep supervision off for it")
        return student, teacher
