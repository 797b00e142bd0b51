"""The post-processing as a MONAI dictionary transform, for a bundle's ``configs/inference.json``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medseg.data.conventions import get_convention
from medseg.postprocessing.rules import apply_postprocessing

__all__ = ["PostprocessLabelsd"]


class PostprocessLabelsd(MapTransform):
    """Apply a recorded post-processing (:mod:`medseg.postprocessing.rules`) to label maps ``(1, X, Y, Z)``.

    Args:
        keys: the label keys (``pred``).
        postprocessing: the checkpoint's ``postprocessing`` (the bundle's ``postprocessing`` id);
            ``None`` leaves the labels as they are.
        convention: the labels' convention name when the rules name BraTS regions; ``None``:
            the rules name class values.
    """

    def __init__(self, keys: KeysCollection, postprocessing: Mapping[str, Any] | None,
                 convention: str | None = None) -> None:
        super().__init__(keys)
        self.postprocessing = dict(postprocessing) if postprocessing else None
        self.convention = get_convention(convention) if convention else None
        if self.convention is not None and not self.convention.is_region_based:
            self.convention = None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.postprocessing:
            return d
        for key in self.key_iterator(d):
            labels = d[key]
            array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
            done = apply_postprocessing(array[0].astype(np.int64), self.postprocessing, self.convention)
            out = torch.as_tensor(done[None].astype(array.dtype))
            if isinstance(labels, torch.Tensor):
                labels = labels.clone()
                labels[...] = out.to(labels.device, labels.dtype)
                d[key] = labels
            else:
                d[key] = out.numpy()
        return d
