"""The distillation recipe: a trained teacher bundle, checked against the student, and the pieces a bundle wires.

Every medseg bundle has a ``teacher`` id (default ``null``). Set it to a trained output bundle
(or its ``models/model.pt``) and the run distils that teacher into the bundle's network::

    medseg train bundles/brats_attention_unet3d --data DIR --set teacher=runs/big_model \\
        --set network_spec#kwargs#features=[8,16,32,64,128]

The bundle's configs call the functions here:

* ``teacher_network``: :func:`load_teacher` rebuilds the teacher from its checkpoint (data, never
  code: the spec names a registry network) and refuses one whose outputs, input channels or
  preprocessing differ from the student's, since its logits would then mean something else.
* ``network``: :func:`with_teacher` pairs the student with it (:class:`~medseg.transfer.TeacherStudent`);
  in eval mode the pair is the student alone, so validation scores the student.
* ``train#trainer#loss_function``: :func:`with_distillation` wraps the bundle's loss in
  :class:`~medseg.losses.DistillationLoss` (sigmoid KL for region and binary outputs, softmax KL
  for classes), with the ``distillation`` id's temperature and weights.
* the checkpoints hold the student alone, under the student's spec
  (:func:`student_of`, used by :class:`~medseg.engine.handlers.run_state.RunStateHandler`).
* the run records ``teacher`` as ``{"path": <absolute>, "sha256": <digest>}`` (:func:`teacher_record`);
  ``medseg reproduce`` passes that back and :func:`load_teacher` refuses a teacher file whose
  digest differs, so a reproduction distils from the same teacher or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from medseg.errors import MedsegError
from medseg.transfer.distill import TeacherStudent

__all__ = ["load_teacher", "student_of", "teacher_record", "with_distillation", "with_teacher"]

# The preprocessing entries that decide what the network's input means: a teacher that saw
# other inputs would give logits the student must not learn from.
INPUT_KEYS = ("task", "spatial_dims", "orientation", "normalize", "channels")
SIGMOID_TASKS = ("regions", "binary")
DISTILLATION_KEYS = frozenset({"temperature", "alpha_kd", "alpha_task"})


def _source(teacher: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[Path, str | None]:
    """``(checkpoint file, expected sha256 or None)`` of a ``teacher`` value."""
    expected = None
    if isinstance(teacher, Mapping):
        unknown = set(teacher) - {"path", "sha256"}
        if unknown or not isinstance(teacher.get("path"), str):
            raise MedsegError(f'teacher: expected a path or {{"path": str, "sha256": str}}, got {dict(teacher)!r:.200}')
        expected = teacher.get("sha256")
        if expected is not None and not isinstance(expected, str):
            raise MedsegError(f"teacher: 'sha256' must be a hex string, got {expected!r:.80}")
        teacher = teacher["path"]
    if not isinstance(teacher, (str, os.PathLike)):
        raise MedsegError(f"teacher: expected a trained output bundle or its models/model.pt, got {teacher!r:.200}")
    path = Path(teacher).expanduser()
    if path.is_dir():
        path = path / "models" / "model.pt"
    if not path.is_file():
        raise MedsegError(f"{path}: teacher checkpoint not found (give a trained output bundle folder or a model.pt)")
    return path.resolve(), expected


def teacher_record(teacher: str | os.PathLike[str] | Mapping[str, Any] | None) -> dict[str, str] | None:
    """What a run records of its teacher: the checkpoint's absolute path and sha256, or ``None``.

    Raises:
        MedsegError: the teacher checkpoint is missing, or differs from a recorded digest.
    """
    if teacher is None:
        return None
    from medseg.tracking.manifest import sha256_file

    path, expected = _source(teacher)
    digest = sha256_file(path)
    if expected is not None and digest != expected:
        raise MedsegError(f"{path}: the teacher checkpoint differs from the one recorded (sha256 {digest[:12]}..., "
                          f"recorded {expected[:12]}...); a reproduction needs the same teacher file")
    return {"path": str(path), "sha256": digest}


def _kwarg(spec: Mapping[str, Any], *names: str) -> Any:
    kwargs = spec.get("kwargs") or {}
    for name in names:
        if name in kwargs:
            return kwargs[name]
    return None


def load_teacher(
    teacher: str | os.PathLike[str] | Mapping[str, Any] | None,
    *,
    student_spec: Mapping[str, Any],
    output_names: Sequence[str] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> nn.Module | None:
    """Rebuild the teacher of a distillation run and check that it fits the student; ``None`` without one.

    Args:
        teacher: ``None`` (no distillation), a trained output bundle folder, its ``model.pt``, or
            the recorded ``{"path", "sha256"}`` of a run (the file must still have that digest).
        student_spec: the student's ``{"name", "kwargs"}`` network spec.
        output_names: the student's output channels (``["TC", "WT", "ET"]``, ``["lesion"]``).
        preprocessing: the student's preprocessing spec (its channels, normalisation, task).

    Returns:
        The teacher network in eval mode, or ``None``.

    Raises:
        MedsegError: naming the teacher file, when it is missing or not a medseg checkpoint, its
            digest differs from the recorded one, or its outputs, input channels, spatial
            dimensions or preprocessing differ from the student's, or the student has deep
            supervision on (distillation compares one output per network).
    """
    if teacher is None:
        return None
    from medseg.checkpoint import build_from_checkpoint, read_model_spec

    record = teacher_record(teacher)
    path = Path(record["path"])
    if _kwarg(student_spec, "deep_supervision"):
        raise MedsegError(f"{path}: distillation needs the student's deep supervision off (set deep_supervision=false)")
    teacher_spec, ckpt = read_model_spec(path)
    spec = teacher_spec.network_spec
    problems = []
    for what, names in (("spatial dimensions", ("spatial_dims",)), ("input channels", ("in_channels",)),
                        ("output channels", ("out_channels",))):
        theirs, ours = _kwarg(spec, *names), _kwarg(student_spec, *names)
        if theirs is not None and ours is not None and theirs != ours:
            problems.append(f"{what}: teacher {theirs}, student {ours}")
    theirs_out = teacher_spec.output_names
    if output_names is not None and theirs_out is not None and list(theirs_out) != list(output_names):
        problems.append(f"outputs: teacher {list(theirs_out)}, student {list(output_names)}")
    theirs_pre = teacher_spec.preprocessing or {}
    for key in INPUT_KEYS:
        if preprocessing is not None and key in preprocessing and key in theirs_pre \
                and theirs_pre[key] != preprocessing[key]:
            problems.append(f"preprocessing {key!r}: teacher {theirs_pre[key]!r}, student {preprocessing[key]!r}")
    if problems:
        raise MedsegError(f"{path}: this teacher does not fit the student, its logits would mean something else: "
                          + "; ".join(problems) + " (train the student with the teacher's settings)")
    return build_from_checkpoint(ckpt, source=path)


def with_teacher(network: nn.Module, teacher: nn.Module | None) -> nn.Module:
    """The network a run trains: ``network`` alone, or paired with ``teacher`` for distillation."""
    return network if teacher is None else TeacherStudent(network, teacher)


def with_distillation(loss: nn.Module, teacher: nn.Module | None, task: str,
                      settings: Mapping[str, Any] | None = None) -> nn.Module:
    """The trainer's loss: ``loss``, or the distillation loss around it when there is a ``teacher``.

    Args:
        loss: the bundle's task loss (its ``loss`` id).
        teacher: from :func:`load_teacher`.
        task: the preprocessing task: ``"regions"`` and ``"binary"`` outputs are sigmoids (per-channel
            KL), ``"multiclass"`` a softmax.
        settings: the ``distillation`` id: ``temperature``, ``alpha_kd``, ``alpha_task``.

    Raises:
        MedsegError: for unknown settings (the loss checks the values).
    """
    if teacher is None:
        return loss
    from medseg.losses import DistillationLoss

    settings = dict(settings or {})
    unknown = set(settings) - DISTILLATION_KEYS
    if unknown:
        raise MedsegError(f"distillation: unknown settings {sorted(unknown)}; known: {sorted(DISTILLATION_KEYS)}")
    return DistillationLoss(loss, sigmoid=task in SIGMOID_TASKS, **settings)


def student_of(network: nn.Module) -> nn.Module:
    """The network a checkpoint saves: DDP unwrapped, and the student alone of a teacher-student pair."""
    network = getattr(network, "module", network)
    return network.student if isinstance(network, TeacherStudent) else network
