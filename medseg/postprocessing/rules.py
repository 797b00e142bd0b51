"""Post-processing of label maps: keep the largest connected component, and the BraTS enhancing-tumour rule.

A post-processing is a small mapping, recorded in a checkpoint's model spec
(:class:`~medseg.checkpoint.ModelSpec` ``postprocessing``) once it has been chosen on
out-of-fold predictions (:mod:`medseg.postprocessing.choice`)::

    {"largest_component": ["WT", "ET"], "et_min_voxels": 100}

* ``largest_component``: region names (a BraTS convention: ``WT``, ``TC``, ``ET``, ``RC``) or
  class values (other labels) that keep only their largest 26-connected component, as nnU-Net's
  ``remove_all_but_largest_component``. Regions are handled outside in: voxels removed from WT
  leave TC and ET too; voxels removed from TC fall back to oedema (they stay in WT); voxels
  removed from ET fall back to the tumour core (necrosis).
* ``et_min_voxels``: when the enhancing tumour of a case has fewer voxels than this, it is
  relabelled as necrosis (it stays in TC), as recent BraTS winners do: a tiny ET prediction on a
  case without ET costs a Dice of 0, an empty one a Dice of 1.

:func:`apply_postprocessing` works on a label map in a convention's values, so the same rules
apply to the masks ``medseg infer`` writes and to out-of-fold masks on disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.data.conventions import LabelConvention
from medseg.errors import InvalidValueError

__all__ = ["NESTING", "REGION_ORDER", "apply_postprocessing", "check_postprocessing", "largest_component",
           "outer_first"]

#: Region -> the region it lies within (BraTS): outer regions are handled first.
NESTING = {"TC": "WT", "ET": "TC"}
REGION_ORDER = ("WT", "TC", "ET", "RC")
MAX_ET_VOXELS = 10**7


def largest_component(mask: np.ndarray) -> np.ndarray:
    """``mask`` with only its largest fully connected component (26 in 3D; an empty mask stays empty)."""
    mask = np.asarray(mask, dtype=bool)
    labelled, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if count <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def check_postprocessing(spec: Any, names: Sequence[str], source: object = "postprocessing") -> dict[str, Any]:
    """Check a post-processing mapping (it may come from a checkpoint) against the outputs it applies to.

    Args:
        spec: the mapping.
        names: the region names, or the class values as strings, it may name.
        source: what to name in the message.

    Raises:
        InvalidValueError: an unknown key or region, or a threshold out of range.
    """
    if not isinstance(spec, Mapping):
        raise InvalidValueError(f"{source}: must be a mapping, got {type(spec).__name__}")
    unknown = set(spec) - {"largest_component", "et_min_voxels"}
    if unknown:
        raise InvalidValueError(f"{source}: unknown entries {sorted(unknown)}")
    kept = spec.get("largest_component") or []
    if not isinstance(kept, list) or any(str(k) not in names for k in kept):
        raise InvalidValueError(f"{source}.largest_component must list some of {list(names)}, got {kept!r}")
    threshold = spec.get("et_min_voxels")
    if threshold is not None and (type(threshold) is not int or not 0 <= threshold <= MAX_ET_VOXELS
                                  or "ET" not in names):
        raise InvalidValueError(f"{source}.et_min_voxels must be an integer in [0, {MAX_ET_VOXELS}] for a model "
                                f"with an ET region, got {threshold!r}")
    return {"largest_component": [str(k) for k in kept], "et_min_voxels": threshold}


def outer_first(names: Sequence[str]) -> list[str]:
    """Region names with the outer regions first (WT, TC, ET, then the others, e.g. RC)."""
    return sorted(names, key=lambda n: REGION_ORDER.index(n) if n in REGION_ORDER else len(REGION_ORDER))


def _regions(labels: np.ndarray, spec: Mapping[str, Any], convention: LabelConvention) -> np.ndarray:
    names = convention.region_names
    regions = convention.to_regions(labels).astype(bool)
    index = {n: i for i, n in enumerate(names)}
    kept = set(spec.get("largest_component") or [])
    for name in outer_first(names):
        parent = NESTING.get(name)
        if parent in index:
            regions[index[name]] &= regions[index[parent]]
        if name in kept:
            regions[index[name]] = largest_component(regions[index[name]])
    threshold = spec.get("et_min_voxels")
    if threshold and "ET" in index and int(regions[index["ET"]].sum()) < threshold:
        regions[index["ET"]] = False
    return convention.from_regions(regions.astype(np.uint8), 0.5).astype(labels.dtype)


def apply_postprocessing(labels: np.ndarray, spec: Mapping[str, Any] | None,
                         convention: LabelConvention | None) -> np.ndarray:
    """Apply a post-processing to a label map.

    Args:
        labels: ``(X, Y, Z)`` label values of ``convention`` (or plain class values).
        spec: the post-processing (see the module docstring); ``None`` or empty: unchanged.
        convention: a region convention (BraTS), whose regions the rules name; ``None`` or a
            convention without regions: the rules name class values.

    Returns:
        The processed label map (a new array; same dtype).
    """
    if not spec or (not spec.get("largest_component") and not spec.get("et_min_voxels")):
        return labels
    if convention is not None and convention.is_region_based:
        return _regions(labels, spec, convention)
    out = labels.copy()
    for value in spec.get("largest_component") or []:
        mask = labels == int(value)
        out[mask & ~largest_component(mask)] = 0
    return out
