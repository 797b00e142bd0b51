"""Label and channel transforms that MONAI does not provide in the form medseg needs.

MONAI's ``ConvertToMultiChannelBasedOnBratsClasses`` hard-codes the BraTS 2021 values, so
regions are built from an explicit :class:`~medseg.data.conventions.LabelConvention`
instead; and the channel permutation of MSD's 4D files differs per dataset, so it is read
from each datalist entry.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medseg.data.conventions import get_convention
from medseg.errors import InvalidValueError
from medseg.transforms.keys import CHANNEL_PERMUTATION


def labels_to_regions(label: torch.Tensor | np.ndarray, convention: str) -> torch.Tensor | np.ndarray:
    """Map a ``(1, *spatial)`` label map to ``(R, *spatial)`` binary regions of ``convention``.

    Works on tensors (keeping MetaTensor metadata) and arrays; values are compared after
    rounding, since labels are often stored as floats.
    """
    conv = get_convention(convention)
    if isinstance(label, torch.Tensor):
        rounded = torch.round(label[0] if label.ndim > 1 and label.shape[0] == 1 else label)
        masks = [torch.isin(rounded, torch.tensor(v, dtype=rounded.dtype, device=rounded.device))
                 for v in conv.regions.values()]
        out = torch.stack(masks).to(torch.float32)
        if isinstance(label, MetaTensor):
            out = MetaTensor(out, meta=label.meta, applied_operations=label.applied_operations)
        return out
    return conv.to_regions(np.asarray(label)[0] if np.ndim(label) == 4 else label).astype(np.float32)


class LabelToRegionsd(MapTransform):
    """Dictionary wrapper of :func:`labels_to_regions`.

    Args:
        keys: label keys.
        convention: a registered label convention name (``brats2021``, ``brats2023``, ``msd_brain``).
    """

    def __init__(self, keys: KeysCollection, convention: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not get_convention(convention).is_region_based:
            raise InvalidValueError(f"convention {convention!r} has no regions; use a softmax (multi-class) pipeline")
        self.convention = convention

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = labels_to_regions(d[key], self.convention)
        return d


class CanonicalChannelsd(MapTransform):
    """Reorder channel-first images with the permutation stored in each sample.

    Samples without ``perm_key`` (files already in canonical order, one per channel) pass
    through unchanged.
    """

    def __init__(self, keys: KeysCollection, perm_key: str = CHANNEL_PERMUTATION,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.perm_key = perm_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        perm = d.get(self.perm_key)
        if perm is None:
            return d
        perm = [int(i) for i in (perm.tolist() if hasattr(perm, "tolist") else perm)]
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] != len(perm):
                raise InvalidValueError(f"{key}: channel permutation {perm} needs {len(perm)} channels, got {image.shape[0]}")
            d[key] = image[perm]
        return d


def validate_roi(roi_size: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Check a ROI size from a config and return it as a tuple."""
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != spatial_dims or min(roi) < 1:
        raise InvalidValueError(f"roi_size needs {spatial_dims} positive sizes, got {list(roi_size)}")
    return roi


class RegionsToLabelsd(MapTransform):
    """Turn thresholded region channels ``(R, *spatial)`` back into a source's label values ``(1, *spatial)``.

    Args:
        keys: prediction keys.
        convention: the label convention whose values are written (``brats2021`` writes 0/1/2/4).
    """

    def __init__(self, keys: KeysCollection, convention: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.convention = get_convention(convention)
        if not self.convention.is_region_based:
            raise InvalidValueError(f"convention {convention!r} has no regions")

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[key]
            array = regions.detach().cpu().numpy() if isinstance(regions, torch.Tensor) else np.asarray(regions)
            labels = torch.as_tensor(self.convention.from_regions(array)[None])
            if isinstance(regions, MetaTensor):
                labels = MetaTensor(labels, meta=regions.meta, applied_operations=regions.applied_operations)
            d[key] = labels
        return d
