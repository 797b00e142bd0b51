"""Ignite handlers that apply epoch-based schedules, so a MONAI bundle config can switch them on.

Example (bundle ``train.json``)::

    "transfer_schedule": {"_target_": "medseg.transfer.FreezeSchedule", "freeze_epochs": 5,
                          "encoder_lr_factor": 0.1},
    "optimizer": {"_target_": "torch.optim.AdamW",
                  "params": "$@transfer_schedule.param_groups(@network, @learning_rate)",
                  "lr": "@learning_rate"},
    "train#handlers": [..., {"_target_": "medseg.transfer.TransferScheduleHandler",
                             "schedule": "@transfer_schedule", "model": "@network",
                             "optimizer": "@optimizer"}]

MONAI's trainer calls ``attach(engine)`` on every handler in its ``train_handlers``.
"""

from __future__ import annotations

from typing import Any, Protocol

from monai.utils import optional_import
from torch import nn
from torch.optim import Optimizer

from medseg.errors import InvalidTypeError
from medseg.transfer.schedule import FreezeSchedule, ProgressiveUnfreeze

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["LossEpochHandler", "TransferScheduleHandler"]


class _EpochScheduled(Protocol):
    def set_epoch(self, epoch: int) -> None: ...


class _EpochStartedHandler:
    """Calls :meth:`on_epoch` with ``engine.state.epoch`` (1-based) when each epoch starts."""

    def attach(self, engine: Any) -> None:
        """Register on ``engine``'s ``EPOCH_STARTED`` event (needs pytorch-ignite)."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Any) -> None:
        self.on_epoch(int(engine.state.epoch))

    def on_epoch(self, epoch: int) -> None:
        raise NotImplementedError


class TransferScheduleHandler(_EpochStartedHandler):
    """Apply a :class:`FreezeSchedule` or :class:`ProgressiveUnfreeze` at the start of each epoch.

    Args:
        schedule: the schedule.
        model: the network whose encoder it freezes.
        optimizer: built from ``schedule.param_groups(model, lr)``.
        lr_scheduler: optional LR scheduler on ``optimizer`` (its ``base_lrs`` are kept in step).
    """

    def __init__(
        self,
        schedule: FreezeSchedule | ProgressiveUnfreeze,
        model: nn.Module,
        optimizer: Optimizer,
        lr_scheduler: Any | None = None,
    ) -> None:
        self.schedule = schedule
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

    def on_epoch(self, epoch: int) -> None:
        """Freeze/unfreeze and set learning rates for ``epoch``."""
        self.schedule.apply(epoch, self.model, self.optimizer, self.lr_scheduler)


class LossEpochHandler(_EpochStartedHandler):
    """Call ``loss.set_epoch(epoch)`` at each epoch start (the boundary loss's rising weight).

    Every bundle's ``train.json`` wires it with ``required: false``, so the schedule follows
    whichever loss the run uses (``--set loss_spec=...``, deep supervision around it) and a loss
    without a schedule is left alone. The boundary weight of the epoch is put in the engine's
    metrics as ``boundary_weight``, so it is logged with the others (MLflow, metadata.json).

    Args:
        loss: a loss with ``set_epoch``, e.g. ``build_loss("boundary")`` or a
            ``DeepSupervisionLoss`` around it.
        required: refuse a loss without ``set_epoch`` (default); ``False`` does nothing for it.
    """

    def __init__(self, loss: _EpochScheduled, required: bool = True) -> None:
        scheduled = callable(getattr(loss, "set_epoch", None))
        if required and not scheduled:
            raise InvalidTypeError(f"`loss` needs a set_epoch(epoch) method, got {type(loss).__name__}")
        self.loss = loss if scheduled else None

    def attach(self, engine: Any) -> None:
        """Register on ``EPOCH_STARTED``, unless the loss has no schedule."""
        if self.loss is not None:
            super().attach(engine)

    def __call__(self, engine: Any) -> None:
        super().__call__(engine)
        weight = _boundary_weight(self.loss)
        metrics = getattr(engine.state, "metrics", None)
        if weight is not None and isinstance(metrics, dict):
            metrics["boundary_weight"] = weight

    def on_epoch(self, epoch: int) -> None:
        """Pass ``epoch`` to the loss."""
        self.loss.set_epoch(epoch)


def _boundary_weight(loss: Any) -> float | None:
    """The scheduled weight (``alpha``) of a loss or of the loss it wraps, if it has one."""
    for candidate in (loss, getattr(loss, "loss", None)):
        alpha = getattr(candidate, "alpha", None)
        if isinstance(alpha, (int, float)):
            return float(alpha)
    return None
