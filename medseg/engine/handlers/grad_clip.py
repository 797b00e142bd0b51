"""Gradient-norm clipping between ``backward()`` and ``optimizer.step()``."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents


def is_step_iteration(engine: Engine) -> bool:
    """Whether the optimizer steps at the end of this iteration (always, without gradient accumulation).

    The same rule as MONAI's ``SupervisedTrainer._iteration``: with ``accumulation_steps`` N the
    step comes every N-th iteration of the epoch, and at the epoch's last iteration.
    """
    acc = int(getattr(engine, "accumulation_steps", 1) or 1)
    if acc <= 1:
        return True
    length = engine.state.epoch_length
    if length is None:
        return engine.state.iteration % acc == 0
    local = (engine.state.iteration - 1) % length
    return (local + 1) % acc == 0 or (local + 1) == length


class GradientClipHandler:
    """Clip the global gradient norm once per optimizer step, just before it.

    MONAI's ``SupervisedTrainer`` fires ``IterationEvents.BACKWARD_COMPLETED`` after every
    backward pass, before the (possible) optimizer step. With gradient accumulation the
    gradients of N micro-batches add up first: clipping a partial sum, or unscaling the AMP
    ``GradScaler`` more than once per step (which raises), would be wrong, so the clip runs
    only on the iterations that step (:func:`is_step_iteration`). Under AMP the gradients are
    unscaled first so the threshold applies to true gradient values.

    Args:
        max_norm: the largest allowed L2 norm of all gradients together; ``None`` or
            ``<= 0`` disables clipping.
    """

    def __init__(self, max_norm: float | None = 1.0) -> None:
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        """Register on the trainer."""
        if self.max_norm and self.max_norm > 0:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_step_iteration(engine):
            return
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None and scaler.is_enabled():
            scaler.unscale_(engine.optimizer)
        params = [p for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, float(self.max_norm))
