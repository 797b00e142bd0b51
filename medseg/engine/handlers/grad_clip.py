"""Gradient-norm clipping between ``backward()`` and ``optimizer.step()``."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents


class GradientClipHandler:
    """Clip the global gradient norm after each backward pass.

    MONAI's ``SupervisedTrainer`` fires ``IterationEvents.BACKWARD_COMPLETED`` before the
    optimizer step; under AMP the gradients are unscaled first so the threshold applies
    to true gradient values.

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
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None and scaler.is_enabled():
            scaler.unscale_(engine.optimizer)
        params = [p for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, float(self.max_norm))
