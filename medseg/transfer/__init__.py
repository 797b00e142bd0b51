"""Transfer learning from local weight files, freeze/unfreeze schedules, and distillation from a teacher.

Nothing here downloads: weights come from a ``.pt``, ``.pth`` or ``.safetensors`` file the user names.
"""

from __future__ import annotations

from medseg.transfer.distill import TeacherStudent
from medseg.transfer.handlers import LossEpochHandler, TransferScheduleHandler
from medseg.transfer.schedule import FreezeSchedule, ProgressiveUnfreeze, encoder_schedule
from medseg.transfer.teacher import load_teacher, student_of, teacher_record, with_distillation, with_teacher
from medseg.transfer.weights import (
    LoadReport,
    encoder_weights_or_scratch,
    load_encoder_weights,
    read_state_dict,
    with_encoder_weights,
)

__all__ = [
    "FreezeSchedule",
    "LoadReport",
    "LossEpochHandler",
    "ProgressiveUnfreeze",
    "TeacherStudent",
    "TransferScheduleHandler",
    "encoder_schedule",
    "encoder_weights_or_scratch",
    "load_encoder_weights",
    "load_teacher",
    "read_state_dict",
    "student_of",
    "teacher_record",
    "with_distillation",
    "with_encoder_weights",
    "with_teacher",
]
