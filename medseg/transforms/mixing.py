"""CutMix for segmentation batches (Yun et al., "CutMix", ICCV 2019), as a trainer handler.

CutMix pastes a random box of another image of the batch into each image; for
segmentation the same box of the other image's mask is pasted into the mask, so the
target stays exact. It mixes *batches*, so it cannot be a per-sample dictionary transform:
:class:`CutMixHandler` applies MONAI's :class:`~monai.transforms.CutMix` to
``engine.state.batch`` when each training iteration starts, before the forward pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.transforms import CutMix
from monai.utils import optional_import

from medseg.errors import InvalidValueError
from medseg.transforms.keys import IMAGE, LABEL

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["CutMixHandler"]


class CutMixHandler:
    """Apply CutMix to a training batch with probability ``prob``.

    Args:
        prob: probability that a batch is mixed; 0 turns CutMix off. Defaults to 0.
        alpha: Beta(alpha, alpha) parameter of the mixing weight, which sets the box size. Defaults to 1.0.
        seed: seed of the handler's own random state.

    Note:
        Its random state is not part of the exact-resume state, so a resumed run with
        CutMix on draws different boxes from the uninterrupted one.
    """

    def __init__(self, prob: float = 0.0, alpha: float = 1.0, seed: int = 0) -> None:
        if not 0.0 <= prob <= 1.0:
            raise InvalidValueError(f"CutMix `prob` must be in [0, 1], got {prob}")
        if alpha <= 0:
            raise InvalidValueError(f"CutMix `alpha` must be > 0, got {alpha}")
        self.prob = float(prob)
        self.alpha = float(alpha)
        self.R = np.random.RandomState(seed)

    def attach(self, engine: Any) -> None:
        """Register on the trainer's ``ITERATION_STARTED`` (a no-op when ``prob`` is 0)."""
        if self.prob > 0:
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Any) -> None:
        batch = engine.state.batch
        image = batch[IMAGE]
        if image.shape[0] < 2 or self.R.uniform() >= self.prob:
            return
        mixer = CutMix(batch_size=int(image.shape[0]), alpha=self.alpha)
        mixer.set_random_state(state=self.R)
        batch[IMAGE], batch[LABEL] = mixer(image, batch[LABEL])
