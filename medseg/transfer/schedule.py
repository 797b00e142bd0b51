"""Freeze-then-unfreeze and progressive unfreezing of a pretrained encoder, with layer-wise learning rates.

Howard & Ruder, "Universal Language Model Fine-tuning" (ULMFiT), ACL 2018: gradual
unfreezing (deepest layers first) and discriminative learning rates; Yosinski et al.,
"How transferable are features in deep neural networks?", NeurIPS 2014.

Build the optimizer from :meth:`param_groups`, then call :meth:`apply` at the start of every
epoch (epochs are 1-based, as ignite's ``engine.state.epoch``), or attach
:class:`medseg.transfer.handlers.TransferScheduleHandler` to the trainer. A frozen part has
``requires_grad=False`` and learning rate 0; on unfreezing, its learning rate becomes
``encoder_lr_factor`` times the head's current learning rate. Batch-norm running statistics
of a frozen encoder still update in training mode; only its weights are frozen.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn
from torch.optim import Optimizer

from medseg.errors import InvalidValueError
from medseg.networks.encoders import encoder_stages

__all__ = ["FreezeSchedule", "ProgressiveUnfreeze", "encoder_schedule"]

logger = logging.getLogger(__name__)

HEAD_GROUP = "head"


def _check_epochs(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")


class _EncoderSchedule:
    """Shared machinery: parameter groups named after encoder parts, plus a ``"head"`` group."""

    def __init__(self, encoder_lr_factor: float, layer_decay: float = 1.0) -> None:
        if not encoder_lr_factor > 0:
            raise InvalidValueError(f"`encoder_lr_factor` must be > 0, got {encoder_lr_factor}")
        if not 0 < layer_decay <= 1:
            raise InvalidValueError(f"`layer_decay` must be in (0, 1], got {layer_decay}")
        self.encoder_lr_factor = float(encoder_lr_factor)
        self.layer_decay = float(layer_decay)
        self._last_state: tuple[bool, ...] | None = None

    def part_factor(self, index: int, n_parts: int) -> float:
        """LR factor of encoder part ``index`` (0 = shallowest): ``encoder_lr_factor * layer_decay**(depth from the top)``.

        The deepest part trains at ``encoder_lr_factor`` x the head's rate and each shallower
        part at ``layer_decay`` times the one above it (layer-wise learning-rate decay, the
        "discriminative fine-tuning" of ULMFiT), since early features transfer best.
        """
        return self.encoder_lr_factor * self.layer_decay ** (n_parts - 1 - index)

    def _parts(self, model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
        """``(group name, parameters)`` for each encoder part, shallowest first."""
        raise NotImplementedError

    def _trainable(self, epoch: int, n_parts: int) -> tuple[bool, ...]:
        """Which encoder parts train at ``epoch``."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module, base_lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: one per encoder part (frozen at first), then the head.

        Args:
            model: the network; its encoder is found by :func:`medseg.networks.encoder_stages`.
            base_lr: the head's learning rate.

        Returns:
            A list of ``{"params", "lr", "name"}`` dicts for ``torch.optim`` constructors.
            Encoder parts that are frozen at epoch 1 start with ``lr = 0``.
        """
        parts = self._parts(model)
        encoder_ids = {id(p) for _, params in parts for p in params}
        head = [p for p in model.parameters() if id(p) not in encoder_ids]
        trainable = self._trainable(1, len(parts))
        groups = [
            {"params": params, "lr": base_lr * self.part_factor(i, len(parts)) if on else 0.0, "name": name}
            for i, ((name, params), on) in enumerate(zip(parts, trainable))
        ]
        groups.append({"params": head, "lr": base_lr, "name": HEAD_GROUP})
        return groups

    def apply(
        self, epoch: int, model: nn.Module, optimizer: Optimizer, lr_scheduler: Any | None = None
    ) -> tuple[bool, ...]:
        """Set ``requires_grad`` and the learning rates for ``epoch`` (1-based).

        Args:
            epoch: the epoch about to start, counting from 1.
            model: the network the optimizer was built for.
            optimizer: built from :meth:`param_groups`.
            lr_scheduler: an LR scheduler on ``optimizer``; its ``base_lrs`` are updated
                too, so schedulers that recompute from them (``LambdaLR``, MONAI's
                ``WarmupCosineSchedule``) keep an unfrozen part's rate.

        Returns:
            For each encoder part (shallowest first), whether it trains in this epoch.

        Raises:
            ValueError: the optimizer lacks the named groups of :meth:`param_groups`.
        """
        _check_epochs("epoch", epoch, 1)
        parts = self._parts(model)
        trainable = self._trainable(epoch, len(parts))
        by_name = {g.get("name"): i for i, g in enumerate(optimizer.param_groups)}
        missing = [name for name, _ in parts if name not in by_name] + (
            [] if HEAD_GROUP in by_name else [HEAD_GROUP]
        )
        if missing:
            raise InvalidValueError(
                f"optimizer has no parameter group(s) named {missing}; build it with "
                f"{type(self).__name__}.param_groups(model, lr), got groups {list(by_name)}"
            )
        head_index = by_name[HEAD_GROUP]
        head_lr = optimizer.param_groups[head_index]["lr"]
        base_lrs = getattr(lr_scheduler, "base_lrs", None)
        for i, ((name, params), on) in enumerate(zip(parts, trainable)):
            for p in params:
                p.requires_grad_(on)
            index = by_name[name]
            group = optimizer.param_groups[index]
            factor = self.part_factor(i, len(parts))
            group["lr"] = head_lr * factor if on else 0.0
            if base_lrs is not None:
                base_lrs[index] = base_lrs[head_index] * factor if on else 0.0
            if "initial_lr" in group and base_lrs is not None:
                group["initial_lr"] = base_lrs[index]
        if trainable != self._last_state:
            logger.info(
                "epoch %d: encoder parts training: %s", epoch, dict(zip([n for n, _ in parts], trainable))
            )
            self._last_state = trainable
        return trainable


class FreezeSchedule(_EncoderSchedule):
    """Freeze the whole encoder for ``freeze_epochs`` epochs, then train it at a lower learning rate.

    Args:
        freeze_epochs: epochs ``1 .. freeze_epochs`` train the head only; from epoch
            ``freeze_epochs + 1`` the encoder trains too. 0 never freezes.
        encoder_lr_factor: encoder lr = factor x head lr once unfrozen (the deepest stage's,
            with ``layer_decay``). Defaults to 0.1.
        layer_decay: below 1, each encoder stage gets its own group and learning rate,
            ``layer_decay`` times that of the stage above it (layer-wise LR). Defaults to 1
            (one encoder group).

    Parameter groups: ``"encoder"`` and ``"head"``; with ``layer_decay < 1``,
    ``"encoder.stage0"`` (stem) ... ``"encoder.stageN"`` (deepest) and ``"head"``.
    """

    def __init__(self, freeze_epochs: int, encoder_lr_factor: float = 0.1, layer_decay: float = 1.0) -> None:
        super().__init__(encoder_lr_factor, layer_decay)
        _check_epochs("freeze_epochs", freeze_epochs, 0)
        self.freeze_epochs = freeze_epochs

    def _parts(self, model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
        if self.layer_decay < 1:
            return [(f"encoder.stage{i}", list(stage.parameters())) for i, stage in enumerate(encoder_stages(model))]
        params = list({id(p): p for stage in encoder_stages(model) for p in stage.parameters()}.values())
        return [("encoder", params)]

    def _trainable(self, epoch: int, n_parts: int) -> tuple[bool, ...]:
        return (epoch > self.freeze_epochs,) * n_parts


class ProgressiveUnfreeze(_EncoderSchedule):
    """Unfreeze the encoder one stage at a time, deepest stage first (ULMFiT's gradual unfreezing).

    Epochs ``1 .. freeze_epochs`` train the head only. Then the deepest stage unfreezes, and
    one more stage every ``epochs_per_stage`` epochs, until the stem trains too.

    Args:
        epochs_per_stage: epochs between two unfreezing steps, >= 1.
        encoder_lr_factor: lr of the deepest unfrozen stage = factor x head lr. Defaults to 0.1.
        freeze_epochs: epochs before the first stage unfreezes. Defaults to ``epochs_per_stage``.
        layer_decay: each shallower stage's lr is this times the one above it. Defaults to 1.

    Parameter groups: ``"encoder.stage0"`` (stem) ... ``"encoder.stageN"`` (deepest), ``"head"``.
    """

    def __init__(
        self, epochs_per_stage: int, encoder_lr_factor: float = 0.1, freeze_epochs: int | None = None,
        layer_decay: float = 1.0,
    ) -> None:
        super().__init__(encoder_lr_factor, layer_decay)
        _check_epochs("epochs_per_stage", epochs_per_stage, 1)
        freeze_epochs = epochs_per_stage if freeze_epochs is None else freeze_epochs
        _check_epochs("freeze_epochs", freeze_epochs, 0)
        self.epochs_per_stage = epochs_per_stage
        self.freeze_epochs = freeze_epochs

    def _parts(self, model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
        return [
            (f"encoder.stage{i}", list(stage.parameters())) for i, stage in enumerate(encoder_stages(model))
        ]

    def unfrozen_stages(self, epoch: int, n_stages: int) -> int:
        """How many stages (counted from the deepest) train at ``epoch``."""
        if epoch <= self.freeze_epochs:
            return 0
        return min(1 + (epoch - self.freeze_epochs - 1) // self.epochs_per_stage, n_stages)

    def _trainable(self, epoch: int, n_parts: int) -> tuple[bool, ...]:
        k = self.unfrozen_stages(epoch, n_parts)
        return tuple(i >= n_parts - k for i in range(n_parts))


def encoder_schedule(freeze_epochs: int, encoder_lr_factor: float = 0.1, layer_decay: float = 1.0,
                     unfreeze_epochs_per_stage: int = 0) -> FreezeSchedule | ProgressiveUnfreeze:
    """The schedule a bundle's ids ask for: one setting switches to progressive unfreezing.

    Args:
        freeze_epochs: epochs ``1 .. freeze_epochs`` train the head only.
        encoder_lr_factor: the deepest encoder stage's learning rate, as a factor of the head's.
        layer_decay: each shallower stage's rate is this times the one above it.
        unfreeze_epochs_per_stage: 0 (default) unfreezes the whole encoder after ``freeze_epochs``
            (:class:`FreezeSchedule`); ``k >= 1`` unfreezes one stage every ``k`` epochs, deepest
            first (:class:`ProgressiveUnfreeze`).
    """
    _check_epochs("unfreeze_epochs_per_stage", unfreeze_epochs_per_stage, 0)
    if unfreeze_epochs_per_stage == 0:
        return FreezeSchedule(freeze_epochs, encoder_lr_factor, layer_decay)
    return ProgressiveUnfreeze(unfreeze_epochs_per_stage, encoder_lr_factor, freeze_epochs, layer_decay)
