"""A student trained from a teacher checkpoint with the distillation loss."""

from __future__ import annotations

import torch

from medseg.checkpoint import save_checkpoint
from medseg.losses import DistillationLoss, build_loss, kd_kl
from medseg.networks import build_network
from medseg.transfer import TeacherStudent

TEACHER = {
    "name": "attention_unet3d",
    "kwargs": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": (4, 8)},
}


def test_student_learns_from_a_teacher_checkpoint(tmp_path):
    torch.manual_seed(0)
    teacher = build_network(TEACHER["name"], **TEACHER["kwargs"])
    path = save_checkpoint(tmp_path / "teacher.pt", teacher, network=TEACHER)
    student = build_network("light_unet", spatial_dims=2, in_channels=1, out_channels=2, features=(4, 8))
    model = TeacherStudent.from_checkpoint(student, path).train()

    assert not model.teacher.training
    assert not any(p.requires_grad for p in model.teacher.parameters())
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 2, (4, 1, 16, 16), generator=torch.Generator().manual_seed(2)).float()
    with torch.no_grad():
        torch.testing.assert_close(model.teacher(x), teacher.eval()(x))  # the checkpoint's weights

    loss_fn = DistillationLoss(build_loss("dice_ce"), temperature=2.0, alpha_kd=1.0, alpha_task=0.1)
    optimizer = torch.optim.Adam(model.student.parameters(), lr=1e-2)
    kd = []
    for _ in range(30):
        pred = model(x)
        assert isinstance(pred, tuple) and len(pred) == 2
        kd.append(float(kd_kl(pred[0], pred[1], 2.0)))
        optimizer.zero_grad()
        loss_fn(pred, y).backward()
        optimizer.step()
    assert kd[-1] < 0.5 * kd[0]
    assert all(p.grad is None for p in model.teacher.parameters())

    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (4, 2, 16, 16)
